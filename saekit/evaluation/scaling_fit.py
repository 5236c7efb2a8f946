"""Fit a scaling law ``L(N, D) = E + A / N**alpha + B / D**beta`` to your own ``(params, tokens, loss)`` table.

The presets in :mod:`saekit.evaluation.effective_compute` describe other people's model families; this module
turns a CSV of one's own models into a :class:`~saekit.evaluation.effective_compute.ScalingLaw` that the
effective-compute report can use instead, and picks between the two for the CLI (:func:`resolve_law`).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from saekit.errors import SaekitError
from saekit.evaluation.effective_compute import LawLike, ScalingLaw, get_law

__all__ = ["fit_scaling_law", "law_from_table", "load_table", "resolve_law"]

_COLUMNS = ("params", "tokens", "loss")
_HUBER_DELTA = 1e-3
_MIN_FIT_ROWS = 5

Objective = Callable[[torch.Tensor], torch.Tensor]


def resolve_law(name: str, table: str | Path | None) -> ScalingLaw:
    """The law the user asked for: fitted to ``table`` when one is given, else the preset ``name``.

    A table wins over the name because the CLI always has a name (its default), so a table given
    alongside it is the more specific request.
    """
    return law_from_table(table) if table is not None else get_law(name)


def law_from_table(path: str | Path) -> ScalingLaw:
    """Fit a law to the ``params,tokens,loss`` CSV at ``path``; it is named ``fit:<file name>``.

    Every problem (missing or unreadable file, bad header, bad or too few rows, a failed fit) raises a
    one-line :class:`SaekitError` naming the file.
    """
    path = Path(path)
    rows = load_table(path)
    try:
        law = fit_scaling_law(rows, name=f"fit:{path.name}")
    except SaekitError as err:
        # The fitter knows only rows, not where they came from; say which file they were.
        raise SaekitError(f"scaling table {path}: {err}") from None
    return dataclasses.replace(law, source=f"{path}: {law.source}")


def fit_scaling_law(
    rows: Sequence[tuple[float, float, float]],
    name: str = "fitted",
    initial: LawLike | None = None,
) -> ScalingLaw:
    """Fit ``L(N, D) = E + A / N**alpha + B / D**beta`` to ``(params, tokens, loss)`` rows.

    Follows Hoffmann et al. (2022): with ``E = exp(e)``, ``A = exp(a)``, ``B = exp(b)``, minimise the Huber
    loss (delta 1e-3) between ``logsumexp(a - alpha log N, b - beta log D, e)`` and ``log L``, by L-BFGS
    from a grid of starting points (plus ``initial`` if given), keeping the best. Needs at least 5 rows
    spanning at least two parameter counts and two token counts.
    """
    table = _validate_rows(rows)
    log_n, log_d, log_l = (torch.tensor([math.log(row[i]) for row in table], dtype=torch.float64) for i in range(3))
    # Centre log N and log D so the amplitude and exponent of each term are not strongly coupled;
    # a_c = a - alpha * mean(log N) is converted back after the fit.
    n_mid, d_mid = float(log_n.mean()), float(log_d.mean())
    objective = _huber_objective(log_n - n_mid, log_d - d_mid, log_l)
    starts = _starts(initial)
    value, theta = _best_fit(objective, _centre(starts, n_mid, d_mid))
    e, a_c, b_c, alpha, beta = theta.tolist()
    A, B = math.exp(a_c + alpha * n_mid), math.exp(b_c + beta * d_mid)
    if not (math.isfinite(A) and math.isfinite(B)):
        raise SaekitError(
            "scaling-law fit diverged (A or B overflowed); give rows that span a wider range of params and tokens"
        )
    source = (
        f"fitted by saekit to {len(table)} (params, tokens, loss) rows: "
        f"Huber loss (delta {_HUBER_DELTA:g}) on log-loss residuals, L-BFGS from {len(starts)} starts; "
        f"final objective {value * _HUBER_DELTA:.3g}"
    )
    return ScalingLaw(name=name, E=math.exp(e), A=A, B=B, alpha=alpha, beta=beta, source=source)


def load_table(path: str | Path) -> list[tuple[float, float, float]]:
    """Read a CSV with header ``params,tokens,loss`` (any column order, extra columns ignored).

    Blank lines and lines starting with ``#`` are skipped. Each value must be a positive finite number;
    a bad row raises :class:`SaekitError` naming its line number.
    """
    path = Path(path)
    lines = _table_lines(path)
    header_line, header_text = lines[0]
    header = [cell.strip().lower() for cell in next(csv.reader([header_text]))]
    missing = [column for column in _COLUMNS if column not in header]
    if missing:
        raise SaekitError(
            f"{path}:{header_line}: header lacks column(s) {', '.join(missing)}; "
            "the first line must name params,tokens,loss"
        )
    positions = [header.index(column) for column in _COLUMNS]
    rows = [_table_row(path, number, line, len(header), positions) for number, line in lines[1:]]
    if not rows:
        raise SaekitError(f"scaling table {path} has a header but no rows; add one row per model")
    return rows


def _table_lines(path: Path) -> list[tuple[int, str]]:
    """Numbered lines of the file that carry data (not blank, not ``#`` comments); at least one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SaekitError(f"cannot read scaling table {path}: {exc.strerror or exc}; check the path") from None
    except UnicodeDecodeError:
        raise SaekitError(f"scaling table {path} is not UTF-8 text; save it as a UTF-8 CSV") from None
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise SaekitError(f"scaling table {path} is empty; give a header params,tokens,loss and one row per model")
    return lines


def _table_row(path: Path, number: int, line: str, width: int, positions: list[int]) -> tuple[float, float, float]:
    cells = next(csv.reader([line]))
    if len(cells) != width:
        raise SaekitError(
            f"{path}:{number}: row has {len(cells)} fields but the header has {width}; give one value per column"
        )
    values = []
    for column, position in zip(_COLUMNS, positions):
        cell = cells[position].strip()
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise SaekitError(f"{path}:{number}: {column} value {cell!r} is not a positive finite number; fix that row")
        values.append(value)
    return values[0], values[1], values[2]


def _huber_objective(x_n: torch.Tensor, x_d: torch.Tensor, log_l: torch.Tensor) -> Objective:
    """Per-start Huber objective on centred log N / log D; theta has shape (starts, 5)."""

    def objective(theta: torch.Tensor) -> torch.Tensor:
        e, a_c, b_c, alpha, beta = theta.unbind(dim=1)
        terms = torch.stack(
            (
                a_c[:, None] - alpha[:, None] * x_n[None, :],
                b_c[:, None] - beta[:, None] * x_d[None, :],
                e[:, None].expand(-1, x_n.numel()),
            )
        )
        predicted = torch.logsumexp(terms, dim=0)
        huber = torch.nn.functional.huber_loss(
            predicted, log_l.expand_as(predicted), reduction="none", delta=_HUBER_DELTA
        )
        return huber.sum(dim=1) / _HUBER_DELTA

    return objective


def _starts(initial: LawLike | None) -> list[tuple[float, float, float, float, float]]:
    """Starting points ``(e, a, b, alpha, beta)`` in uncentred coordinates: a grid, plus ``initial``."""
    starts = list(
        itertools.product((-1.0, 0.0, 1.0), (0.0, 7.5, 15.0), (0.0, 7.5, 15.0), (0.2, 0.5, 1.0), (0.2, 0.5, 1.0))
    )
    if initial is not None:
        law = get_law(initial)
        # E may be 0 in a user's law; log(0) is -inf, so start from a tiny floor instead.
        starts.append((math.log(law.E) if law.E > 0 else -10.0, math.log(law.A), math.log(law.B), law.alpha, law.beta))
    return starts


def _centre(starts: list[tuple[float, ...]], n_mid: float, d_mid: float) -> torch.Tensor:
    raw = torch.tensor(starts, dtype=torch.float64)
    centred = raw.clone()
    centred[:, 1] = raw[:, 1] - raw[:, 3] * n_mid
    centred[:, 2] = raw[:, 2] - raw[:, 4] * d_mid
    return centred


def _best_fit(objective: Objective, starts: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The lowest objective value and its (centred) parameters over all starts, with alpha, beta > 0."""
    # Stage 1: all starts together. The problems are independent, so the sum's gradient separates;
    # L-BFGS on the sum is a cheap screen that moves every start towards its local basin.
    screened = _lbfgs(objective, starts, max_iter=60)
    with torch.no_grad():
        values = objective(screened)
    values = torch.where(torch.isfinite(values), values, torch.full_like(values, math.inf))
    order = torch.argsort(values)
    # Stage 2: refine the most promising starts one at a time and keep the best valid law.
    best: tuple[float, torch.Tensor] | None = None
    for index in order[: min(5, len(order))].tolist():
        refined = _lbfgs(objective, screened[index : index + 1], max_iter=500)
        with torch.no_grad():
            value = float(objective(refined)[0])
        alpha, beta = refined[0, 3].item(), refined[0, 4].item()
        if not math.isfinite(value) or alpha <= 0 or beta <= 0:
            continue
        if best is None or value < best[0]:
            best = (value, refined[0])
    if best is None:
        raise SaekitError(
            "scaling-law fit found no law whose loss falls with both parameters and tokens; "
            "give rows that span a wider range of params and tokens"
        )
    return best


def _lbfgs(objective: Objective, theta0: torch.Tensor, max_iter: int) -> torch.Tensor:
    theta = theta0.detach().clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.5),
        tolerance_grad=1e-12,
        tolerance_change=1e-13,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = objective(theta).sum()
        value.backward()
        return value

    optimiser.step(closure)
    return theta.detach()


def _validate_rows(rows: Sequence[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    try:
        items = list(rows)
    except TypeError:
        raise SaekitError("rows must be a sequence of (params, tokens, loss) tuples") from None
    if len(items) < _MIN_FIT_ROWS:
        raise SaekitError(
            f"fitting a scaling law needs at least {_MIN_FIT_ROWS} (params, tokens, loss) rows, got "
            f"{len(items)}; add more models/checkpoints"
        )
    table = [_validate_row(index, row) for index, row in enumerate(items)]
    if len({row[0] for row in table}) < 2 or len({row[1] for row in table}) < 2:
        raise SaekitError(
            "scaling-law rows must span at least two parameter counts and two token counts; "
            "add models of other sizes or checkpoints at other token counts"
        )
    return table


def _validate_row(index: int, row: object) -> tuple[float, float, float]:
    try:
        params, tokens, loss = row  # type: ignore[misc]
    except (TypeError, ValueError):
        raise SaekitError(f"row {index} is {row!r}, not a (params, tokens, loss) triple; fix that row") from None
    values = []
    for label, value in zip(_COLUMNS, (params, tokens, loss)):
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise SaekitError(f"row {index}: {label}={value!r} is not a positive finite number; fix that row")
        values.append(number)
    return values[0], values[1], values[2]
