"""The three tasks `accuracy.py` trains on: data loading, models, batches and evaluation.

Each task is a `Task`: it hands out the training batches of an epoch in an order that depends
only on (seed, epoch), so every policy sees exactly the same batches, and it evaluates a
(compiled) model on a fixed held-out set with fixed-shape batches, so a run compiles one
training graph and one evaluation graph and nothing more.

Data comes from files (paths are arguments) or from scikit-learn's bundled digits; nothing
downloads. CIFAR-10 JPEGs are decoded once with Pillow and cached as arrays under
``~/.cache/qcompile`` (never in the repository).
"""

from __future__ import annotations

import hashlib
import math
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.testing.benchmark_models import Block as GPTBlock  # the speed benchmarks' pre-LN block, shared

ROOT = Path(__file__).resolve().parent.parent
# ``../shared/data`` seen from the project root; from a git worktree one level deeper, its parent's.
DEFAULT_DATA = next(
    (p for p in (ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data") if p.is_dir()),
    ROOT.parent / "shared" / "data",
)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qcompile`` (default ``~/.cache/qcompile``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qcompile"


# --------------------------------------------------------------------------- models


class BasicBlock(nn.Module):
    """ResNet-20's block: two 3x3 convs with BatchNorm; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): stem, three stages of n blocks (width w, 2w, 4w), pool, linear.

    n=3, w=16 is ResNet-20 (0.27 M parameters); the benchmark narrows w to fit its CPU budget.
    """

    def __init__(self, width: int = 16, blocks_per_stage: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.layers(x)
        return self.head(x.mean((2, 3)))


class CharGPT(nn.Module):
    """A small GPT over characters: token + learned position embeddings, blocks, final LN, linear head."""

    def __init__(self, vocab: int, d: int = 64, heads: int = 4, layers: int = 2, block: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(block, d))
        self.blocks = nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


# --------------------------------------------------------------------------- task protocol


@dataclass
class Task:
    """One benchmark task. ``batches(seed, epoch)`` yields the epoch's (input, target) pairs;
    ``evaluate(model)`` returns metrics on the held-out set (``metric`` is the headline one)."""

    name: str
    model_name: str
    make_model: Callable[[], nn.Module]
    batches: Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]]
    metric: str
    higher_is_better: bool
    epochs: int
    steps_per_epoch: int
    lr: float
    sizes: dict[str, object]
    optimizer: str = "adam"  # "adam", or "sgd" (momentum 0.9, Nesterov) with ``weight_decay``
    weight_decay: float = 0.0

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """The task's optimizer over ``params`` at its base LR (the schedule sets the LR per step)."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, nesterov=True, weight_decay=self.weight_decay)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: adam, sgd")


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch): same data order for every policy."""
    return torch.Generator().manual_seed(1_000_003 * seed + epoch)


def _classification_eval(x: torch.Tensor, y: torch.Tensor, batch: int):
    def evaluate(model: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(y), batch):
                logits = model(x[i : i + batch]).float()
                correct += int((logits.argmax(1) == y[i : i + batch]).sum())
                loss_sum += float(F.cross_entropy(logits, y[i : i + batch], reduction="sum"))
        return {"test_accuracy": 100.0 * correct / len(y), "test_loss": loss_sum / len(y)}

    return evaluate


def _trim(x: torch.Tensor, y: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = (len(y) // multiple) * multiple
    return x[:n], y[:n]


# --------------------------------------------------------------------------- digits


def digits_task(*, epochs: int = 4, batch: int = 64, lr: float = 3e-3, limit: int | None = None,
                split_seed: int = 0) -> Task:  # fmt: skip
    """scikit-learn's 8x8 digits with the demo's residual conv net (the 1-minute smoke task)."""
    from qcompile.demo import DigitsNet, load_digits_split

    data = load_digits_split(split_seed, limit)
    n = len(data.y_train)
    steps = n // batch
    if steps == 0:
        raise ValueError(f"batch {batch} exceeds the {n} training images")

    def batches(seed: int, epoch: int):
        order = torch.randperm(n, generator=_epoch_generator(seed, epoch))
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            yield data.x_train[idx], data.y_train[idx]

    return Task(
        name="digits", model_name="DigitsNet (stem + 1 residual block, BN, w=32)", make_model=DigitsNet,
        batches=batches, loss=F.cross_entropy,
        evaluate=_classification_eval(data.x_test, data.y_test, len(data.y_test)),
        metric="test_accuracy", higher_is_better=True, epochs=epochs, steps_per_epoch=steps, lr=lr,
        sizes={"train": n, "test": len(data.y_test), "batch": batch, "epochs": epochs, "split_seed": split_seed},
    )  # fmt: skip


# --------------------------------------------------------------------------- CIFAR-10


def load_cifar10(archive: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All of CIFAR-10 as uint8 N×32×32×3 arrays and int64 labels, from the JPEG tarball.

    Decoded once with Pillow and cached under `cache_dir()`, keyed by the archive's size and
    mtime (a different copy of the archive gets its own cache file).
    """
    archive = Path(archive)
    if not archive.exists():
        raise FileNotFoundError(f"CIFAR-10 archive not found: {archive} (pass --cifar PATH)")
    st = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    cached = cache_dir() / f"cifar10-jpg-{key}.npz"
    if cached.exists():
        with np.load(cached) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    from PIL import Image

    parts: dict[str, tuple[list[np.ndarray], list[int], list[str]]] = {
        "train": ([], [], []),
        "test": ([], [], []),
    }
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            split, cls = Path(member.name).parts[-3:-1]
            if split not in parts or cls not in CIFAR_CLASSES:
                continue
            f = tar.extractfile(member)
            assert f is not None
            img = np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8)
            xs, ys, names = parts[split]
            xs.append(img)
            ys.append(CIFAR_CLASSES.index(cls))
            names.append(member.name)
    out = []
    for split in ("train", "test"):
        xs, ys, names = parts[split]
        order = np.argsort(np.array(names))  # archive order is not guaranteed; file names are
        out += [np.stack(xs)[order], np.array(ys, dtype=np.int64)[order]]
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=out[0], y_train=out[1], x_test=out[2], y_test=out[3])
    tmp.replace(cached)
    return out[0], out[1], out[2], out[3]


def _balanced_subset(y: np.ndarray, n: int) -> np.ndarray:
    """The first n/10 images of each class (in file-name order): fixed, class-balanced."""
    per_class = n // len(CIFAR_CLASSES)
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(len(CIFAR_CLASSES))]))


def random_crops(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation's crop: zero-pad ``pad`` pixels on each side (zero is the
    mean after normalisation), then cut each image's original size at a random offset."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(-1, 1) + torch.arange(h)).view(n, 1, h, 1)
    cols = (dx.view(-1, 1) + torch.arange(w)).view(n, 1, 1, w)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1), rows, cols]


def cifar10_task(archive: Path, *, train: int = 8_000, test: int = 2_000, epochs: int = 4, batch: int = 128,
                 width: int = 8, blocks_per_stage: int = 3, lr: float = 3e-3, eval_batch: int = 500,
                 crop: int = 0, optimizer: str = "adam", weight_decay: float = 0.0) -> Task:  # fmt: skip
    """CIFAR-10 with a ResNet-20-style net on a class-balanced subset; random horizontal flips, and
    with ``crop=4`` the standard random crops of the zero-padded image (He et al. 2016, Sec. 4.2)."""
    x_tr, y_tr, x_te, y_te = load_cifar10(archive)
    tr, te = _balanced_subset(y_tr, train), _balanced_subset(y_te, test)

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)

    xt, xv = to_tensor(x_tr[tr]), to_tensor(x_te[te])
    mean, std = xt.mean((0, 2, 3), keepdim=True), xt.std((0, 2, 3), keepdim=True)
    xt, xv = ((xt - mean) / std).contiguous(), ((xv - mean) / std).contiguous()
    yt, yv = torch.from_numpy(y_tr[tr]), torch.from_numpy(y_te[te])
    eval_batch = min(eval_batch, len(yv))
    xv, yv = _trim(xv, yv, eval_batch)
    n = len(yt)
    steps = n // batch

    def batches(seed: int, epoch: int):
        g = _epoch_generator(seed, epoch)
        order = torch.randperm(n, generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            x = xt[idx]
            x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(3), x)
            if crop:
                x = random_crops(x, crop, g)
            yield x, yt[idx]

    depth = 6 * blocks_per_stage + 2
    return Task(
        name="cifar10", model_name=f"ResNet-{depth} (w={width},{2 * width},{4 * width}; BN, residuals)",
        make_model=lambda: ResNet20(width, blocks_per_stage), batches=batches, loss=F.cross_entropy,
        evaluate=_classification_eval(xv, yv, eval_batch), metric="test_accuracy", higher_is_better=True,
        epochs=epochs, steps_per_epoch=steps, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
        sizes={"train": n, "test": len(yv), "batch": batch, "epochs": epochs, "width": width,
               "blocks_per_stage": blocks_per_stage,
               "augmentation": "random horizontal flip" + (f", random {crop}-pixel-padded crop" if crop else ""),
               "subset": "first N/10 images of each class in file-name order", "optimizer": optimizer,
               "weight_decay": weight_decay},
    )  # fmt: skip


# --------------------------------------------------------------------------- tiny-shakespeare


def lm_task(text_path: Path, *, steps: int = 360, evals: int = 6, batch: int = 32, block: int = 64, d: int = 64,
            heads: int = 4, layers: int = 2, lr: float = 3e-3, val_batches: int = 16) -> Task:  # fmt: skip
    """Character-level GPT on tiny-shakespeare (90/10 split). An "epoch" is ``steps/evals`` steps
    of random windows; the metric is the mean validation loss (nats per char) on a fixed set of
    ``val_batches`` windows drawn once (seed 0)."""
    text = Path(text_path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    if steps % evals:
        raise ValueError(f"--lm-steps {steps} must be a multiple of --lm-evals {evals}")
    per_epoch = steps // evals

    def windows(src: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts.view(-1, 1) + torch.arange(block + 1).view(1, -1)
        w = src[idx]
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    val_starts = torch.randint(
        0, len(val) - block - 1, (val_batches * batch,), generator=torch.Generator().manual_seed(0)
    )
    xv, yv = windows(val, val_starts)

    def batches(seed: int, epoch: int):
        g = _epoch_generator(seed, epoch)
        starts = torch.randint(0, len(train) - block - 1, (per_epoch, batch), generator=g)
        for s in starts:
            yield windows(train, s)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def evaluate(model: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(yv), batch):
                total += float(loss(model(xv[i : i + batch]), yv[i : i + batch]))
        val_loss = total / val_batches
        return {"val_loss": val_loss, "val_bpc": val_loss / math.log(2)}

    return Task(
        name="tinyshakespeare", model_name=f"char GPT ({layers} layers, d={d}, {heads} heads, block {block})",
        make_model=lambda: CharGPT(len(chars), d, heads, layers, block), batches=batches, loss=loss,
        evaluate=evaluate, metric="val_loss", higher_is_better=False, epochs=evals, steps_per_epoch=per_epoch,
        lr=lr,
        sizes={"train_chars": len(train), "val_chars": len(val), "val_windows": val_batches * batch,
               "steps": steps, "eval_every": per_epoch, "batch": batch, "block": block, "d": d, "heads": heads,
               "layers": layers, "vocab": len(chars)},
    )  # fmt: skip
