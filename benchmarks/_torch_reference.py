"""PyTorch eager reference steps, for the JAX/PyTorch side-by-side of ``step_cost``.

The networks mirror :mod:`jaxkd.models` layer for layer (same plans, widths, BatchNorm
placement, pooling; not the same initial weights, which do not change the cost), and each
step does what the jaxkd train step does for the same objective:

* student forward in train mode, cross-entropy (+ Hinton KD with the teacher's logits,
  the teacher in eval mode under ``no_grad``);
* Jacobian terms on the student in eval mode (running statistics), as jaxkd's
  ``student_fn``; for a network without BatchNorm (SmallCNN) train and eval mode are the
  same function and the one forward serves both, as a PyTorch user would write it;
* exact Jacobian matching: ``torch.autograd.grad(..., create_graph=True)`` for the
  student (double backward), plain ``autograd.grad`` for the teacher (a constant);
  all-output matching loops over the K outputs;
* VJP projection: one ``autograd.grad(create_graph=True)`` per probe;
* JVP projection: forward-mode AD (``torch.autograd.forward_ad`` dual tensors), then
  ``backward`` through the tangent computation (reverse-over-forward);
* noisy distillation: all noisy copies as one batch, squared error of the logits;
* one SGD (momentum 0.9) update.

torch is imported lazily: install the ``torch`` extra (``pip install jaxkd[torch]``).
"""

from __future__ import annotations

import importlib.util


def available() -> bool:
    """Whether torch can be imported."""
    return importlib.util.find_spec("torch") is not None


def _nets():
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self, cin, k, width=32, hidden=128):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
            self.dense = nn.Linear(2 * width, hidden)
            self.head = nn.Linear(hidden, k)

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            h = _pool(h)
            h = torch.relu(self.conv2(h))
            h = _pool(h).mean(dim=(2, 3))
            return self.head(torch.relu(self.dense(h)))

    def _pool(h):
        if h.shape[2] < 4 or h.shape[3] < 4:
            return h
        return nn.functional.max_pool2d(h, 2, 2)

    class ConvBN(nn.Sequential):
        def __init__(self, cin, cout):
            super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1), nn.ReLU())

    class VGG(nn.Module):
        def __init__(self, cin, k, plan, width):
            super().__init__()
            blocks, c = [], cin
            for block in plan:
                layers = []
                for mult in block:
                    layers.append(ConvBN(c, mult * width))
                    c = mult * width
                blocks.append(nn.Sequential(*layers))
            self.blocks = nn.ModuleList(blocks)
            self.head = nn.Linear(c, k)

        def forward(self, x):
            h = x
            for i, block in enumerate(self.blocks):
                if i > 0:
                    h = _pool(h)
                h = block(h)
            return self.head(h.mean(dim=(2, 3)))

    class PreAct(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                             if (cin != cout or stride != 1) else None)

        def forward(self, x):
            a = torch.relu(self.bn1(x))
            skip = x if self.shortcut is None else self.shortcut(a)
            h = self.conv2(torch.relu(self.bn2(self.conv1(a))))
            return h + skip

    class WRN(nn.Module):
        def __init__(self, depth, widen, cin, k, base=16):
            super().__init__()
            n = (depth - 4) // 6
            self.stem = nn.Conv2d(cin, base, 3, padding=1, bias=False)
            blocks, c = [], base
            for g, stride in enumerate((1, 2, 2)):
                cout = base * widen * 2**g
                for b in range(n):
                    blocks.append(PreAct(c, cout, stride if b == 0 else 1))
                    c = cout
            self.blocks = nn.Sequential(*blocks)
            self.bn = nn.BatchNorm2d(c)
            self.head = nn.Linear(c, k)

        def forward(self, x):
            h = self.blocks(self.stem(x))
            return self.head(torch.relu(self.bn(h)).mean(dim=(2, 3)))

    return SmallCNN, VGG, WRN


def build(spec: dict, in_channels: int, num_classes: int):
    """A torch twin of a ``step_cost`` zoo spec ``{"name": <models.create name>, **sizes}``."""
    from jaxkd.models import VGG4_PLAN, VGG9_PLAN
    SmallCNN, VGG, WRN = _nets()
    name = spec["name"]
    if name == "small_cnn":
        return SmallCNN(in_channels, num_classes, width=spec["width"])
    if name in ("vgg4", "vgg9"):
        plan = VGG4_PLAN if name == "vgg4" else VGG9_PLAN
        return VGG(in_channels, num_classes, plan, spec["width"])
    if name == "wrn":
        return WRN(spec["depth"], spec["widen_factor"], in_channels, num_classes)
    raise ValueError(f"no torch twin of zoo model {name!r}")


# The zoo terms (``benchmarks._zoo.MODES[...]["term"]``) that :func:`make_step` has a twin
# of; a zoo mode with another term (the reverse-over-forward experiment) has no PyTorch step.
ZOO_TERMS = (None, "jm_top1", "jm_all", "vjp", "jvp", "noisy")


def make_step(mode: dict, student_spec: dict, teacher_spec: dict, batch: int,
              image_size: int, num_classes: int, *, seed: int = 0, device: str = "cpu"):
    """Returns ``step()`` running one PyTorch training step of ``mode`` on a fixed batch.

    ``mode`` is a ``step_cost`` zoo mode description: ``{"kd": bool, "term": None |
    "jm_top1" | "jm_all" | "vjp" | "jvp" | "noisy", "k": int}``. ``device``: ``"cpu"`` or
    ``"cuda"`` (the step then synchronises before returning, so wall time is its cost).
    """
    import torch
    import torch.nn.functional as F
    from torch.autograd import forward_ad as fwad

    torch.manual_seed(seed)
    student = build(student_spec, 3, num_classes).to(device)
    teacher = build(teacher_spec, 3, num_classes).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    # NCHW, PyTorch's native (and fastest on CPU) layout.
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    term, k, temperature, sigma = mode["term"], mode.get("k", 1), 4.0, 0.1

    def eval_student(inp):
        student.eval()
        try:
            return student(inp)
        finally:
            student.train()

    def step():
        opt.zero_grad(set_to_none=True)
        student.train()
        need_x_grad = term in ("jm_top1", "jm_all", "vjp")
        xin = x.detach().requires_grad_(need_x_grad)
        with torch.no_grad():
            t_logits = teacher(x) if mode["kd"] or term is not None else None
        s_logits = student(xin)
        loss = F.cross_entropy(s_logits, y)
        if mode["kd"]:
            loss = loss + temperature**2 * F.kl_div(
                F.log_softmax(s_logits / temperature, -1),
                F.log_softmax(t_logits / temperature, -1), log_target=True,
                reduction="batchmean")
        if term in ("jm_top1", "jm_all", "vjp"):
            s_out = s_logits if not has_bn else eval_student(xin)
            xt = x.detach().requires_grad_(True)
            t_out = teacher(xt)
            if term == "jm_top1":
                idx = t_out.detach().argmax(-1, keepdim=True)
                cots = [F.one_hot(idx[:, 0], num_classes).to(x.dtype)]
            elif term == "jm_all":
                cots = [F.one_hot(torch.full((batch,), i, device=device),
                                  num_classes).to(x.dtype) for i in range(num_classes)]
            else:
                cots = [torch.randint(0, 2, (batch, num_classes), device=device).to(x.dtype)
                        * 2 - 1 for _ in range(k)]
            total = 0.0
            for j, v in enumerate(cots):
                last = j == len(cots) - 1
                (g_t,) = torch.autograd.grad(t_out, xt, v, retain_graph=not last)
                (g_s,) = torch.autograd.grad(s_out, xin, v, create_graph=True)
                g_t, g_s = g_t.flatten(1), g_s.flatten(1)
                if term == "jm_top1":
                    g_t = g_t / torch.sqrt((g_t**2).sum(-1, keepdim=True) + 1e-12)
                    g_s = g_s / torch.sqrt((g_s**2).sum(-1, keepdim=True) + 1e-12)
                total = total + ((g_t - g_s)**2).sum(-1)
            if term == "vjp":
                total = total / k
            loss = loss + total.mean()
        elif term == "jvp":
            total = 0.0
            for _ in range(k):
                u = torch.randint(0, 2, x.shape, device=device).to(x.dtype) * 2 - 1
                with fwad.dual_level():
                    with torch.no_grad():
                        t_u = fwad.unpack_dual(teacher(fwad.make_dual(x, u))).tangent
                    s_u = fwad.unpack_dual(eval_student(fwad.make_dual(x, u))).tangent
                total = total + ((t_u - s_u)**2).sum(-1)
            loss = loss + (total / k).mean()
        elif term == "noisy":
            noisy = (x[None] + sigma * torch.randn((k,) + x.shape, device=device)).reshape(
                (k * batch,) + x.shape[1:])
            with torch.no_grad():
                t_noisy = teacher(noisy)
            s_noisy = eval_student(noisy)
            loss = loss + ((t_noisy - s_noisy)**2).sum(-1).mean()
        loss.backward()
        opt.step()
        _sync(device)

    return step


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def user_cnn(pool: str, widths: tuple[int, int], num_classes: int, image_size: int):
    """The user-model CNN of ``benchmarks._user_models`` in PyTorch (NCHW).

    ``Conv(w1, 3x3, same) - ReLU - pool - Conv(w2) - ReLU - pool - flatten - Linear(K)``;
    ``pool`` is ``"avg"`` (``avg_pool2d``) or ``"max"``/``"reshape"`` (``max_pool2d``:
    PyTorch has one max-pool, with a cheap double backward).
    """
    import torch
    from torch import nn

    pool_fn = nn.functional.avg_pool2d if pool == "avg" else nn.functional.max_pool2d

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1)
            self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1)
            self.head = nn.Linear(widths[1] * (image_size // 4) ** 2, num_classes)

        def forward(self, x):
            h = pool_fn(torch.relu(self.conv1(x)), 2)
            h = pool_fn(torch.relu(self.conv2(h)), 2)
            return self.head(h.flatten(1))

    return CNN()


USER_MODES = ("kd", "jm", "jvp_k1", "vjp_k1", "jm_all")


def make_user_step(pool: str, mode: str, *, batch: int, image_size: int, num_classes: int,
                   width: int, seed: int = 0, device: str = "cpu", eps: float = 1e-6):
    """``step()``: the user-model step of ``mode`` in PyTorch eager (Adam, fixed batch).

    CE + KD (temperature 4) + the term: ``jm`` label-output Jacobian matching with
    ``autograd.grad(create_graph=True)`` for the student and plain ``autograd.grad`` for
    the teacher (one forward of each network serves both the logits and the gradient),
    norms floored as ``sqrt(|g|^2 + eps^2)``; ``jm_all`` loops over the K outputs;
    ``vjp_k1`` one Rademacher output probe; ``jvp_k1`` forward-mode AD along one
    Rademacher input probe, then ``backward`` (reverse over forward).
    """
    import torch
    import torch.nn.functional as F
    from torch.autograd import forward_ad as fwad

    if mode not in USER_MODES:
        raise ValueError(f"no PyTorch user-model mode {mode!r}; choose from {USER_MODES}")
    torch.manual_seed(seed)
    student = user_cnn(pool, (width, 2 * width), num_classes, image_size).to(device)
    teacher = user_cnn(pool, (2 * width, 4 * width), num_classes, image_size).to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    reverse = mode in ("jm", "jm_all", "vjp_k1")

    def normalise(g):
        return g / torch.sqrt((g * g).sum(-1, keepdim=True) + eps**2)

    def step():
        opt.zero_grad(set_to_none=True)
        xs = x.detach().requires_grad_(reverse)
        xt = x.detach().requires_grad_(reverse)
        s_out = student(xs)
        t_out = teacher(xt)
        t_logits = t_out.detach()
        loss = F.cross_entropy(s_out, y) + 16.0 * F.kl_div(
            F.log_softmax(s_out / 4.0, -1), F.log_softmax(t_logits / 4.0, -1),
            log_target=True, reduction="batchmean")
        if reverse:
            if mode == "jm":
                cots = [F.one_hot(y, num_classes).to(x.dtype)]
            elif mode == "jm_all":
                cots = [F.one_hot(torch.full((batch,), i, device=device),
                                  num_classes).to(x.dtype) for i in range(num_classes)]
            else:
                cots = [torch.randint(0, 2, (batch, num_classes), device=device).to(x.dtype)
                        * 2 - 1]
            total = 0.0
            for j, c in enumerate(cots):
                last = j == len(cots) - 1
                (g_t,) = torch.autograd.grad(t_out, xt, c, retain_graph=not last)
                (g_s,) = torch.autograd.grad(s_out, xs, c, create_graph=True)
                g_t, g_s = g_t.flatten(1), g_s.flatten(1)
                if mode == "jm":
                    g_t, g_s = normalise(g_t), normalise(g_s)
                total = total + ((g_t - g_s) ** 2).sum(-1)
            loss = loss + total.mean()
        elif mode == "jvp_k1":
            u = torch.randint(0, 2, x.shape, device=device).to(x.dtype) * 2 - 1
            with fwad.dual_level():
                with torch.no_grad():
                    t_u = fwad.unpack_dual(teacher(fwad.make_dual(x, u))).tangent
                s_u = fwad.unpack_dual(student(fwad.make_dual(x, u))).tangent
            loss = loss + ((t_u - s_u) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()
        _sync(device)

    return step
