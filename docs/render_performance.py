"""Renderers of the generated tables in docs/performance.md (see docs/generate.py).

Every table is computed from the raw output of a benchmark command under ``results/performance/``: the text
that ``colu bench`` and ``benchmarks/bench_conv.py`` print (one file per run, comment lines first), or the JSON
that ``colu bench --json`` writes. Nothing here types a number in.

Renderers (arguments are paths relative to the repository root, in the order given):

* ``bench-table FILE``: one ``colu bench`` run in full.
* ``bench-summary SHAPE FILE...``: per run, the ranges over S of hard and soft CoLU/RCoLU (grouped layout,
  identity axis) on one shape, against ReLU and SiLU, and a last row over all runs.
* ``model-steps FILE...``: the training-step rows of ``colu bench`` (the MLP, ``--models``), the ratio of each
  step to its baseline's per run, and the median over runs.
* ``conv-ranges [split-s] [drop-disturbed] FILE...``: ``bench_conv.py`` runs, hard CoLU against ReLU and soft
  CoLU against SiLU per input, ranges over S (``split-s``: a row per S) and runs. ``drop-disturbed`` leaves out
  a ratio whose printed baseline (the one timed beside S = 4) took more than twice that baseline's fastest time
  over the runs.
* ``layout-ranges FILE...``: ``colu bench --layouts grouped,axes_first --axis-activations identity,relu,silu``
  runs: per layout, kind and axis activation, ranges over shapes, S, scalings and runs of the ratios to ReLU
  (hard) or SiLU (soft), and of forward+backward to the paper's configuration (grouped CoLU, identity axis,
  same shape, S and scaling, same run).
"""

from __future__ import annotations

import json
import pathlib
import re
import statistics

# multi-word column names of the printed tables, and the keys they are read into
_COLUMNS = {
    "fwd ms": "fwd_ms", "f+b ms": "fb_ms", "fwd GB/s": "fwd_gbs", "f+b GB/s": "fb_gbs", "saved B": "saved",
    "f/ReLU": "f_relu", "f/SiLU": "f_silu", "fb/ReLU": "fb_relu", "fb/SiLU": "fb_silu", "f/copy": "f_copy",
    "f/base": "f_base", "fb/base": "fb_base",
}
_JSON_KEYS = {"fwd_ms": "fwd_ms", "fwdbwd_ms": "fb_ms", "fwd_vs_relu": "f_relu", "fwd_vs_silu": "f_silu",
              "fwdbwd_vs_relu": "fb_relu", "fwdbwd_vs_silu": "fb_silu"}
_MODEL = re.compile(r"^# (?:run \d+: )?(?P<model>.+? (?:train step|fwd\+bwd, compiled)): (?P<act>.+?)\s+"
                    r"(?P<ms>[\d.]+) ms\s+x(?P<ratio>[\d.]+) vs (?P<base>\w+)(?P<compiled> compiled)?\s*$")
_BASELINES = ("relu", "silu", "gelu")


def _read(root, name):
    path = pathlib.Path(root) / name
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such results file")
    return path


def _header_keys(line: str) -> list:
    text = line
    for words, key in sorted(_COLUMNS.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"(?<!\S){re.escape(words)}(?!\S)", key, text)
    return text.split()


def parse(root, name) -> dict:
    """``{"rows": [...], "models": [...]}`` of one results file (printed text or ``colu bench --json``)."""
    path = _read(root, name)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = [dict(shape="x".join(map(str, r["shape"])), activation=r["activation"],
                     **{key: r[k] for k, key in _JSON_KEYS.items()}) for r in data["rows"]]
        base_ms = {(m["model"], m.get("baseline", "relu")): m["step_ms"] for m in data.get("model_rows", [])
                   if m["activation"] == m.get("baseline", "relu")}
        models = [dict(model=m["model"], activation=m["activation"], ms=m["step_ms"], base=m.get("baseline", "relu"),
                       ratio=m["step_ms"] / base_ms[(m["model"], m.get("baseline", "relu"))],
                       compiled=bool(data.get("compiled")))
                  for m in data.get("model_rows", [])]
        return {"rows": rows, "models": models}
    rows, models, keys = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _MODEL.match(line)
        if match:
            models.append(dict(model=match["model"], activation=match["act"].strip(), ms=float(match["ms"]),
                               ratio=float(match["ratio"]), base=match["base"].lower(),
                               compiled=bool(match["compiled"])))
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "activation" in line.split():
            keys = _header_keys(line)
            continue
        if keys is None:
            raise ValueError(f"{name}: a table row before any header: {line!r}")
        tokens = line.split()
        lead = keys[: keys.index("activation")]  # shape, and format for bench_conv.py
        numeric = keys[keys.index("activation") + 1:]
        row = dict(zip(lead, tokens[: len(lead)]))
        row["activation"] = " ".join(tokens[len(lead): len(tokens) - len(numeric)])
        row.update({k: float(v) for k, v in zip(numeric, tokens[len(tokens) - len(numeric):])})
        if "f_base" in row and rows and rows[-1]["activation"] in _BASELINES:
            # bench_conv.py prints the baseline timed beside the CoLU row right after it (S = 4), not the others'
            row["baseline_row"] = rows[-1]
        rows.append(row)
    return {"rows": rows, "models": models}


def _config(activation: str) -> dict | None:
    """kind, S, scaling, layout, axis activation of a CoLU/RCoLU row name; ``None`` for a baseline."""
    tokens = activation.split()
    if tokens[0] not in ("colu", "rcolu"):
        return None
    rest = tokens[3:]
    return dict(kind=tokens[0], S=int(tokens[1].removeprefix("S=")), scaling=tokens[2],
                layout="axes_first" if "axes_first" in rest else "grouped",
                act=next((t for t in rest if t in ("relu", "silu")), "identity"))


def _range(values, digits=2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return f"{lo}×" if lo == hi else f"{lo}–{hi}×"


def _label(name: str) -> str:
    stem = pathlib.PurePath(name).stem
    match = re.search(r"-run(\d+)$", stem)
    text = f"run {match[1]}" if match else stem
    return f"[{text}](../{name})"


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def bench_table(root, name):
    rows = parse(root, name)["rows"]
    body = [(f"({r['shape'].replace('x', ', ')})", f"`{r['activation']}`", f"{r['fwd_ms']:.3f}", f"{r['f_relu']:.2f}",
             f"{r['f_silu']:.2f}", f"{r['fb_ms']:.3f}", f"{r['fb_relu']:.2f}", f"{r['fb_silu']:.2f}") for r in rows]
    return _table(["shape", "activation", "fwd ms", "fwd / ReLU", "fwd / SiLU", "f+b ms", "f+b / ReLU", "f+b / SiLU"],
                  body)


def bench_summary(root, shape, *names):
    def cells(rows):
        cones = [(r, _config(r["activation"])) for r in rows if r["shape"] == shape]
        cones = [(r, c) for r, c in cones if c and c["layout"] == "grouped" and c["act"] == "identity"]
        hard = [r for r, c in cones if c["scaling"] == "hard"]
        soft = [r for r, c in cones if c["scaling"] == "soft"]
        relu = [r["fwd_ms"] for r in rows if r["shape"] == shape and r["activation"] == "relu"]
        return [_range(relu, 3).rstrip("×"),
                _range([r["f_relu"] for r in hard]), _range([r["f_relu"] for r in soft]),
                _range([r["f_silu"] for r in soft]), _range([r["fb_relu"] for r in hard]),
                _range([r["fb_relu"] for r in soft]), _range([r["fb_silu"] for r in soft])]

    runs = [(name, parse(root, name)["rows"]) for name in names]
    body = [[_label(name), *cells(rows)] for name, rows in runs]
    if len(runs) > 1:
        body.append(["all runs", *cells([r for _, rows in runs for r in rows])])
    return _table(["run", "ReLU fwd ms", "hard fwd / ReLU", "soft fwd / ReLU", "soft fwd / SiLU",
                   "hard f+b / ReLU", "soft f+b / ReLU", "soft f+b / SiLU"], body)


def model_steps(root, *names):
    runs = [parse(root, name)["models"] for name in names]
    keys = []
    for models in runs:
        for m in models:
            key = (m["model"], m["activation"], m["base"])
            if m["activation"] != m["base"] and key not in keys:
                keys.append(key)
    body = []
    compiled = any(m.get("compiled") for models in runs for m in models)
    for model, act, base in keys:
        ratios = [next((m["ratio"] for m in models if (m["model"], m["activation"], m["base"]) == (model, act, base)),
                       None) for models in runs]
        known = [r for r in ratios if r is not None]
        against = ("compiled " if compiled else "") + ("ReLU" if base == "relu" else "SiLU")
        row = [model.removesuffix(" train step"), f"`{act}` vs {against}"]
        row += [f"{r:.3f}" if r is not None else "–" for r in ratios]
        if len(runs) > 1:
            row.append(f"{statistics.median(known):.3f}")
        body.append(row)
    header = ["model (training step)", "activation"] + [_label(n) for n in names]
    if len(runs) > 1:
        header.append("median")
    return _table(header, body)


def conv_ranges(root, *args):
    split = "split-s" in args
    drop = "drop-disturbed" in args
    names = [a for a in args if a not in ("split-s", "drop-disturbed")]
    runs = [parse(root, name)["rows"] for name in names]
    inputs = []
    for rows in runs:
        for r in rows:
            if (r["shape"], r["format"]) not in inputs:
                inputs.append((r["shape"], r["format"]))

    def disturbed(row, key):
        """Whether the baseline printed beside ``row`` took more than twice its fastest time over the runs."""
        base = row.get("baseline_row")
        if not drop or base is None:
            return False
        times = [r[key] for rows in runs for r in rows
                 if (r["shape"], r["format"], r["activation"]) == (base["shape"], base["format"], base["activation"])]
        return base[key] > 2 * min(times)

    def ratios(shape, fmt, scaling, S, key):
        out = []
        for rows in runs:
            for r in rows:
                c = _config(r["activation"])
                if (r["shape"], r["format"]) == (shape, fmt) and c and c["scaling"] == scaling and S in (None, c["S"]):
                    if not disturbed(r, {"f_base": "fwd_ms", "fb_base": "fb_ms"}[key]):
                        out.append(r[key])
        return out

    body = []
    sizes = sorted({_config(r["activation"])["S"] for rows in runs for r in rows if _config(r["activation"])})
    for shape, fmt in inputs:
        for S in (sizes if split else [None]):
            row = [f"{fmt} ({shape.replace('x', ', ')})"] + ([str(S)] if split else [])
            row += [_range(ratios(shape, fmt, scaling, S, key))
                    for scaling in ("hard", "soft") for key in ("f_base", "fb_base")]
            body.append(row)
    header = ["input"] + (["S"] if split else []) + [
        "hard fwd / ReLU", "hard f+b / ReLU", "soft fwd / SiLU", "soft f+b / SiLU"]
    return _table(header, body)


def layout_ranges(root, *names):
    groups = [("grouped", "colu", "identity", "grouped CoLU, identity axis (the paper's)"),
              ("grouped", "colu", "act", "grouped CoLU, relu or silu axis"),
              ("grouped", "rcolu", "identity", "RCoLU, identity axis"),
              ("grouped", "rcolu", "act", "RCoLU, relu or silu axis"),
              ("axes_first", "colu", "identity", "axes_first CoLU, identity axis"),
              ("axes_first", "colu", "act", "axes_first CoLU, relu or silu axis")]
    cells = {g: ([], [], []) for g in groups}
    for name in names:
        rows = parse(root, name)["rows"]
        paper = {}
        for r in rows:
            c = _config(r["activation"])
            if c and c["kind"] == "colu" and c["layout"] == "grouped" and c["act"] == "identity":
                paper[(r["shape"], c["S"], c["scaling"])] = r["fb_ms"]
        for r in rows:
            c = _config(r["activation"])
            if c is None:
                continue
            for g in groups:
                layout, kind, act, _ = g
                if (c["layout"], c["kind"]) == (layout, kind) and (c["act"] == "identity") == (act == "identity"):
                    soft = c["scaling"] != "hard"
                    cells[g][0].append(r["f_silu"] if soft else r["f_relu"])
                    cells[g][1].append(r["fb_silu"] if soft else r["fb_relu"])
                    cells[g][2].append(r["fb_ms"] / paper[(r["shape"], c["S"], c["scaling"])])
    body = [[label, *(_range(v) for v in cells[g])] for g in groups for label in [g[3]] if cells[g][0]]
    return _table(["rows", "fwd / ReLU or SiLU", "f+b / ReLU or SiLU", "f+b / the paper's"], body)


RENDERERS = {
    "bench-table": bench_table,
    "bench-summary": bench_summary,
    "model-steps": model_steps,
    "conv-ranges": conv_ranges,
    "layout-ranges": layout_ranges,
}
