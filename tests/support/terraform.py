"""infra/terraform parsed offline with python-hcl2 (`terraform validate` needs providers CI cannot
download), plus the look-ups the wiring tests share: resources, blocks, references, variables'
defaults and IAM grants. A resource with `for_each` over a local map is expanded into its
instances (`name["key"]`), as Terraform plans it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hcl2

from tests.support import REPO

TF_DIR = REPO / "infra" / "terraform"


# ---------------------------------------------------------------------------------------------
# Parsing: python-hcl2 keeps HCL's quotes around strings and keys and marks blocks; strip both.
# ---------------------------------------------------------------------------------------------
_HCL2_MARKERS = ("__is_block__", "__comments__", "__inline_comments__")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {_unquote(k): clean(v) for k, v in node.items() if k not in _HCL2_MARKERS}
    if isinstance(node, list):
        return [clean(v) for v in node]
    if isinstance(node, str):
        return _unquote(node)
    return node


def load_config(tf_dir: Path = TF_DIR) -> dict[str, Any]:
    """All .tf files merged: resources, data, variables, locals, outputs, terraform blocks."""
    cfg: dict[str, Any] = {
        "resource": {},
        "data": {},
        "variable": {},
        "locals": {},
        "output": {},
        "terraform": [],
    }
    for path in sorted(tf_dir.glob("*.tf")):
        with path.open() as fh:
            doc = clean(hcl2.load(fh))
        for kind in ("resource", "data"):
            for entry in doc.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        assert name not in cfg[kind].setdefault(rtype, {}), f"duplicate {rtype}.{name}"
                        cfg[kind][rtype][name] = body
        for entry in doc.get("variable", []):
            cfg["variable"].update(entry)
        for entry in doc.get("output", []):
            cfg["output"].update(entry)
        for entry in doc.get("locals", []):
            cfg["locals"].update(entry)
        cfg["terraform"].extend(doc.get("terraform", []))
    _expand_for_each(cfg)
    return cfg


_EACH = re.compile(r"\beach\.(key|value)((?:\.[a-z0-9_]+)*)")


def _each(key: str, value: Any, which: str, attrs: str) -> Any:
    picked: Any = key if which == "key" else value
    for attr in filter(None, attrs.split(".")):
        picked = picked[attr]
    return picked


def _substitute(node: Any, key: str, value: Any) -> Any:
    """`each.key` / `each.value[.attr]` replaced by one instance's values, anywhere in a body."""
    if isinstance(node, dict):
        return {k: _substitute(v, key, value) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, key, value) for v in node]
    if not isinstance(node, str):
        return node
    whole = re.fullmatch(r"\$\{" + _EACH.pattern + r"\}", node)
    if whole:
        return _each(key, value, *whole.groups())

    def inline(match: re.Match[str]) -> str:
        picked = str(_each(key, value, *match.groups()))
        inner = re.fullmatch(r"\$\{(.+)\}", picked)
        return inner.group(1) if inner else json.dumps(picked)

    return _EACH.sub(inline, node)


def _expand_for_each(cfg: dict[str, Any]) -> None:
    """`resource "t" "n" { for_each = local.m }` over a literal map -> instances `n["key"]`."""
    for named in cfg["resource"].values():
        for name, body in list(named.items()):
            match = re.fullmatch(r"\$\{local\.([a-z0-9_]+)\}", str(body.get("for_each", "")))
            items = cfg["locals"].get(match.group(1)) if match else None
            if not isinstance(items, dict):
                continue  # a computed for_each (e.g. a conditional) stays one entry
            del named[name]
            for key, value in items.items():
                instance = {k: v for k, v in body.items() if k != "for_each"}
                named[f'{name}["{key}"]'] = _substitute(instance, key, value)


def bucket(key: str) -> str:
    """Reference to one of the private buckets (storage.tf): `google_storage_bucket.private["uploads"]`."""
    return f'google_storage_bucket.private["{key}"]'


def res(cfg: dict[str, Any], rtype: str, name: str) -> dict[str, Any]:
    assert name in cfg["resource"].get(rtype, {}), f"missing resource {rtype}.{name}"
    return cfg["resource"][rtype][name]


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block `name` (hcl2 gives blocks as one-element lists)."""
    value = body.get(name)
    assert isinstance(value, list) and len(value) == 1, f"expected exactly one {name} block"
    return value[0]


def ref(expr: Any) -> str:
    """`${google_x.y.attr}` -> `google_x.y.attr` (other values unchanged, as strings)."""
    text = str(expr)
    match = re.fullmatch(r"\$\{(.+)\}", text)
    return match.group(1) if match else text


def resolve(cfg: dict[str, Any], expr: Any) -> Any:
    """A value that is exactly `${local.x}` or `${var.x}` becomes that local or the variable's default."""
    match = re.fullmatch(r"\$\{(local|var)\.([a-z0-9_]+)\}", str(expr))
    if not match:
        return expr
    kind, name = match.groups()
    value = cfg["locals"][name] if kind == "local" else cfg["variable"][name].get("default")
    return resolve(cfg, value)


def default(cfg: dict[str, Any], var: str) -> Any:
    assert var in cfg["variable"], f"missing variable {var}"
    return cfg["variable"][var].get("default")


def iam_members(cfg: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every *_iam_member resource as (type.name, role, body)."""
    out = []
    for rtype, named in cfg["resource"].items():
        if rtype.endswith("_iam_member"):
            for name, body in named.items():
                out.append((f"{rtype}.{name}", str(resolve(cfg, body.get("role"))), body))
    return out


def grants_of(cfg: dict[str, Any], member_ref: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [g for g in iam_members(cfg) if ref(g[2].get("member")) == member_ref]


# ---------------------------------------------------------------------------------------------
# Monitoring (monitoring.tf): filters with their locals expanded, and the rendered dashboard.
# ---------------------------------------------------------------------------------------------
def expand(cfg: dict[str, Any], text: Any) -> str:
    """A string with every `${local.x}` replaced by that local (recursively) and HCL's `\\"` unescaped,
    as Cloud Logging or Cloud Monitoring receives it (resource references stay `${...}`)."""
    out = str(text)
    for _ in range(10):
        new = re.sub(r"\$\{local\.([a-z0-9_]+)\}", lambda m: str(cfg["locals"][m.group(1)]), out)
        if new == out:
            break
        out = new
    return out.replace('\\"', '"')


def _dynamic_conditions(cfg: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    """`dynamic "conditions" { for_each = local.m ... }` over a literal map, one condition per entry
    with `conditions.key` / `conditions.value` substituted, as Terraform plans them."""
    out = []
    for entry in body.get("dynamic", []):
        spec = entry.get("conditions")
        if spec is None:
            continue
        match = re.fullmatch(r"\$\{local\.([a-z0-9_]+)\}", str(spec["for_each"]))
        items = cfg["locals"].get(match.group(1)) if match else None
        assert isinstance(items, dict), "dynamic conditions over no literal map"
        for key, value in items.items():
            text = json.dumps(spec["content"][0])
            text = text.replace("${conditions.key}", key).replace("${conditions.value}", str(value))
            out.append(json.loads(text))
    return out


def alert_conditions(cfg: dict[str, Any], policy: str) -> list[dict[str, Any]]:
    """The `condition_threshold` blocks of one alert policy (dynamic ones expanded), filters expanded."""
    body = res(cfg, "google_monitoring_alert_policy", policy)
    out = []
    for condition in [*body.get("conditions", []), *_dynamic_conditions(cfg, body)]:
        threshold = dict(block(condition, "condition_threshold"))
        threshold["display_name"] = condition.get("display_name")
        for key in ("filter", "denominator_filter"):
            if key in threshold:
                threshold[key] = expand(cfg, threshold[key])
        out.append(threshold)
    return out


def dashboard(cfg: dict[str, Any], name: str = "pipeline") -> dict[str, Any]:
    """The dashboard's JSON as Terraform renders it: `templatefile(path, {k = v, ...})`, with each
    value written as the expression it is (`${google_x.y.name}`, locals expanded)."""
    text = str(res(cfg, "google_monitoring_dashboard", name)["dashboard_json"])
    call = re.fullmatch(r'\$\{templatefile\("\$\{path\.module\}/([^"]+)", \{(.*)\}\)\}', text, re.S)
    assert call, f"dashboard_json is not templatefile(path.module/..., {{...}}): {text[:120]}"
    values = {}
    for key, value in re.findall(r'(\w+) = ("[^"]*"|[A-Za-z0-9_.\[\]]+)', call.group(2)):
        values[key] = expand(cfg, value[1:-1] if value.startswith('"') else f"${{{value}}}")
    template = (TF_DIR / call.group(1)).read_text()
    missing = set(re.findall(r"(?<!\$)\$\{(\w+)\}", template)) - set(values)
    assert not missing, f"dashboard template variables without a value: {missing}"
    rendered = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: values[m.group(1)], template)
    return json.loads(rendered)


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(tile title, timeSeriesFilter, dataSet) for every chart line of a mosaic dashboard."""
    out = []
    for tile in board["mosaicLayout"]["tiles"]:
        widget = tile["widget"]
        for data_set in widget.get("xyChart", {}).get("dataSets", []):
            out.append((widget["title"], data_set["timeSeriesQuery"]["timeSeriesFilter"], data_set))
    return out


DELETE = object()  # set_at(path, DELETE) removes the key


def set_at(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of a parsed configuration, for showing that a wiring check can fail."""

    def mutate(cfg: dict[str, Any]) -> None:
        node = cfg
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return mutate
