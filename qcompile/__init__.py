"""qcompile: a torch.compile backend for fully quantized training (4-bit forward and backward).

model = torch.compile(model, backend="fqt", options={"policy": "luq-int4"})
print(qcompile.plan(model))

``backend="fqt"`` comes from the package's ``torch_dynamo_backends`` entry point;
`qcompile.register()` registers it where entry points are not installed.
"""

from typing import Any

from qcompile import runtime  # noqa: F401  (registers the qcompile:: ops)
from qcompile.compiler.compiled_graphs import clear as clear_plans
from qcompile.compiler.registration import register
from qcompile.exporters.api import export
from qcompile.policy.config import ROLES, LayerDecision, Policy, PolicyError, Rule
from qcompile.policy.files import load_policy_file, resolve_policy
from qcompile.policy.fine_tuning import fnt, fnt_lr, fnt_policy, fnt_scheduler
from qcompile.policy.recipes import DEFAULT_PRESET, preset, presets
from qcompile.report.gemm_plan import Plan, PlanRow, plan
from qcompile.report.gradient_report import GradientReport, gradient_diagnostics
from qcompile.report.shortfalls import HighPrecisionGemmError, HighPrecisionGemmWarning
from qcompile.runtime.quantizer_state import QuantizerState, attach_state, state_of
from qcompile.runtime.spec import NAMED_SPECS, QuantSpec, parse_spec
from qcompile.tensor_quantize import quantize
from qcompile.version import __version__


def __getattr__(name: str) -> Any:
    """``qcompile.fqt_backend``, imported on first use: importing the backend installs its Dynamo
    tracing hooks (`qcompile.compiler.trace_rules`), which ``import qcompile`` alone must not do."""
    if name == "fqt_backend":
        from qcompile.compiler.backend import fqt_backend

        return fqt_backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "DEFAULT_PRESET",
    "GradientReport",
    "HighPrecisionGemmError",
    "HighPrecisionGemmWarning",
    "NAMED_SPECS",
    "ROLES",
    "LayerDecision",
    "Plan",
    "PlanRow",
    "Policy",
    "PolicyError",
    "QuantSpec",
    "QuantizerState",
    "Rule",
    "attach_state",
    "clear_plans",
    "export",
    "fnt",
    "fnt_lr",
    "fnt_policy",
    "fnt_scheduler",
    "fqt_backend",
    "gradient_diagnostics",
    "load_policy_file",
    "parse_spec",
    "plan",
    "preset",
    "presets",
    "quantize",
    "register",
    "resolve_policy",
    "state_of",
]
