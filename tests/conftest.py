# Triton kernels are tested on CPU through Triton's interpreter (or on a GPU with
# QCOMPILE_TEST_DEVICE=cuda); the choice sets TRITON_INTERPRET, which must happen before any test
# imports qcompile (and so Triton): see tests/kernel_device.py.
# isort: off
import tests.kernel_device  # noqa: F401
# isort: on

import pytest
import torch

# The whole package, imported up front: pytest-xdist's controller re-imports the module of each
# warning a worker reports (e.g. `HighPrecisionGemmWarning`), and that import must not be the
# first one of qcompile in the controller.
import qcompile  # noqa: F401


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no Dynamo cache entries leak between tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# The costliest compiles outside tests/e2e/ (each took 45 s or more with an empty Inductor cache,
# `--durations` of full runs on the 2-core Xeon and the 2-core EPYC), and the tests that share their
# module fixtures (a fixture's cost falls on whichever of its tests runs first). Marked `slow` with the end-to-end
# tests: `make test` skips them so that a fresh clone's run stays near 15 minutes; `make
# test-slow` runs them, and CI (`.ci/run`) runs both. "file::test" covers every parameter;
# "file::test[param]" one case.
SLOW_COMPILES = (
    "integration/test_recompute_from_codes.py::test_recompute_is_bit_identical_on_transformers_and_gpt_blocks",
    "integration/test_recompute_from_codes.py::test_saved_activations_are_at_most_a_quarter_of_fp32",
    "integration/test_recompute_from_codes.py::test_demo_net_trains_bit_identically_with_a_replayed_fp32_stem",
    "integration/test_cpu_int8_gemm.py::test_hf_gpt2_on_the_integer_kernels",
    "integration/test_cpu_int8_gemm.py::test_transformer_block_on_the_integer_kernels",
    "integration/test_cpu_int8_gemm.py::test_mlp_trains_on_the_integer_kernels_with_the_reference_numbers",
    "integration/test_packed_saved.py::test_packed_conv_net_and_attention_are_bit_identical",
    "integration/test_packed_saved.py::test_packed_training_is_bit_identical_to_unpacked",
    "integration/test_packed_saved.py::test_forward_saves_packed_codes_and_bit_masks_nothing_twice",
    "integration/test_packed_saved.py::test_saved_bytes_accounting_matches_the_tensors_autograd_holds",
    "integration/test_packed_saved.py::test_plan_shows_saved_bytes_per_layer_and_in_total",
    "integration/test_packed_saved.py::test_packing_applies_under_bf16_autocast",
    "integration/test_block_formats_backend.py::test_block_formats_under_activation_checkpointing_and_a_new_batch_size",
    "integration/test_block_formats_backend.py::test_attention_in_a_block_format_runs_batched_requantizing_gemms",
    "integration/test_block_formats_backend.py::test_presets_train_and_their_gradients_differ_from_fp32_as_the_format_predicts",
    "integration/test_block_formats_backend.py::test_fp8_errs_below_fp4",
    "integration/test_block_formats_backend.py::test_plan_cells_and_bits_name_format_block_scale_and_hadamard",
    "integration/test_triton_gpu_compile.py::test_every_kernel_compiles_within_the_devices_budget",
    "integration/test_triton_gpu_compile.py::test_the_gemms_use_tensor_cores_in_every_layout_and_tuning_config",
    "integration/test_triton_gpu_compile.py::test_the_forward_gemm_is_software_pipelined",
    "integration/test_triton_gpu_compile.py::test_the_fp8_gemm_builds_in_every_layout_on_tensor_cores",
    "integration/test_higher_order_ops.py::test_gradients_differ_from_fp32_inductor_under_checkpointing",
    "integration/test_higher_order_ops.py::test_checkpointed_blocks_save_nothing_but_their_inputs",
    "integration/test_determinism_and_resume.py::test_train_eval_switch_and_no_grad_regions",
    "integration/test_higher_order_ops.py::test_a_stochastic_forward_quantizer_is_saved_not_replayed",
    "integration/test_higher_order_ops.py::test_blocks_inside_higher_order_ops_are_quantized_and_bit_identical",
    "integration/test_higher_order_ops.py::test_hugging_face_gradient_checkpointing_trains_exactly_as_without_it[inductor-gpt2]",
    "integration/test_higher_order_ops.py::test_hugging_face_gradient_checkpointing_trains_exactly_as_without_it[inductor-bert]",
    "integration/test_fuse_triton_gemms.py::test_hf_gpt2_linear_layers_fuse_and_attention_stays_on_inductor",
    "integration/test_fuse_triton_gemms.py::test_transformer_layer_fused_step_matches_the_inductor_step",
    "integration/test_compiler_isolation.py::test_plan_survives_an_aot_autograd_cache_hit",
    "integration/test_gemm_census.py::test_dynamic_batch_sizes_after_an_fp32_compile_of_the_same_class",
    "integration/test_fnt.py::test_fnt_switches_a_compiled_model_and_schedules_the_lr",
    "integration/test_backend_robustness.py::test_multihead_attention_is_traced_into_without_changing_numerics",
    "integration/test_backend_robustness.py::test_matmul_family_ops_are_rewritten",
    "integration/test_backend_robustness.py::test_dynamic_sequence_length_through_attention_compiles_once",
    "integration/test_backend_robustness.py::test_batch_size_one_and_non_contiguous_3d_inputs",
    "integration/test_backend_graphs.py::test_plan_names_what_conv_backward_reads_after_the_channels_last_relayout",
    "unit/test_imports_without_triton.py::test_compile_train_and_plan_without_triton[int8]",
)


def pytest_collection_modifyitems(config, items):
    wanted = {f"tests/{name}" for name in SLOW_COMPILES}
    found = set()
    for item in items:
        path, _, rest = item.nodeid.partition("::")
        for key in (item.nodeid, f"{path}::{rest.partition('[')[0]}"):
            if key in wanted:
                item.add_marker(pytest.mark.slow)
                found.add(key)
    # A renamed test must not silently fall back into the default run: say which names are stale
    # (only when the whole suite was collected, not for a single file or -k selection).
    missing = wanted - found
    if (
        missing
        and not config.args[1:]
        and config.getoption("keyword") == ""
        and all(str(a).rstrip("/") in ("tests", str(config.rootpath / "tests")) for a in config.args)
    ):
        raise pytest.UsageError(
            f"tests/conftest.py SLOW_COMPILES names tests that do not exist: {sorted(missing)}"
        )
