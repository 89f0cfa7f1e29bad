"""What `cog build` does with this package, checked without Docker or the Go CLI.

No `cog build` runs here (no Docker daemon): these checks stand in for it. Each one ports a rule
from Cog's source, replicate/cog @ 6110c912377d (2026-08-21), and cites the file and function.
Where Cog reads Python statically (tree-sitter), the check reads predict.py the same way and
compares the result with what Python itself makes of the code (the runtime `Input()` objects and
decorator attributes), so a value Cog drops or copies differently fails here.
The requirements rewrite (config.go `pythonPackageForArch`) is in tests/test_requirements.py.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COG_SCHEMA = Path(__file__).parent / "data" / "cog_config_schema_v1.0.json"  # copied, @ 6110c912
# pkg/config/torch_compatibility.json: torch -> CUDA versions with a wheel index (2.7 onwards).
COG_TORCH_CUDA = {
    "2.7.0": {"11.8", "12.6", "12.8"},
    "2.7.1": {"11.8", "12.6", "12.8"},
    "2.8.0": {"12.6", "12.8", "12.9"},
    "2.9.0": {"12.6", "12.8", "13.0"},
    "2.9.1": {"12.6", "12.8", "13.0"},
}
COG_TORCH_PYTHONS = {"2.9.1": {"3.10", "3.11", "3.12", "3.13", "3.14"}}
# pkg/schema/types.go PrimitiveFromName, plus list[...] of one (ResolveInputType).
# types.go PrimitiveFromName, and ResolveFieldType: `X | None` (UnwrapOptional) is Optional.
INPUT_TYPES = {"str", "int", "float", "bool", "Path", "File", "Secret", "list[str]", "int | None"}
INPUT_KEYWORDS = ("default", "description", "ge", "le", "min_length", "max_length", "regex")
INPUT_KEYWORDS += ("choices", "deprecated")


class CogBuildError(Exception):
    """An error `cog build` would stop with."""


# --- pkg/schema/python/literals.go ---------------------------------------------------------


def cog_string_literal(text: str) -> str | None:
    """literals.go parseStringLiteral: the raw text between the first and the last quote.

    No escape processing, no joining of adjacent literals; prefixes other than r (f, b, u) fail.
    """
    if text.startswith(('"""', "'''")):
        return text[3:-3] if len(text) >= 6 else None
    if text.startswith(('"', "'")):
        return text[1:-1] if len(text) >= 2 else None
    if text.startswith(('r"', "r'")):
        return text[2:-1] if len(text) >= 3 else None
    return None


def go_parse_float(text: str) -> float | None:
    """Go strconv.ParseFloat for decimal text (no underscores without a base prefix).

    Hex floats are not modelled and read as failures, which only makes the checks stricter.
    """
    text = text.strip()
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return float(text)
    if re.fullmatch(r"[+-]?(inf|infinity|nan)", text, re.I):
        return float(text)
    return None


def go_parse_int(text: str) -> int | None:
    """Go strconv.ParseInt(text, 0, 64): Python's integer literal syntax, 64-bit range."""
    try:
        value = int(text, 0)
    except ValueError:
        return None
    return value if -(2**63) <= value < 2**63 else None


def segment(source: str, node: ast.AST) -> str:
    """The node's source text, which is what tree-sitter's Content() gives Cog."""
    return ast.get_source_segment(source, node)


def cog_default_value(source: str, node: ast.expr) -> tuple[bool, object]:
    """literals.go parseDefaultValue: (ok, value) for a literal; ok=False for anything else."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, bool)):
        return True, node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        value = go_parse_int(segment(source, node))
        return value is not None, value
    if isinstance(node, ast.Constant) and isinstance(node.value, float):
        value = go_parse_float(segment(source, node))
        return value is not None, value
    if isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
    ):
        value = cog_string_literal(segment(source, node))  # "string"/"concatenated_string"
        return value is not None, value
    if isinstance(node, ast.List | ast.Set):
        items = [cog_default_value(source, item) for item in node.elts]
        return all(ok for ok, _ in items), [v for _, v in items]
    if isinstance(node, ast.Tuple) and segment(source, node).startswith("("):
        return True, [v for ok, v in (cog_default_value(source, i) for i in node.elts) if ok]
    if isinstance(node, ast.Dict):
        pairs = [
            (cog_default_value(source, k), cog_default_value(source, v))
            for k, v in zip(node.keys, node.values, strict=True)
            if k is not None
        ]
        return True, {k[1]: v[1] for k, v in pairs if k[0] and v[0]}
    if isinstance(node, ast.UnaryOp):  # "unary_operator": the whole text must parse
        text = segment(source, node).strip()
        value = go_parse_int(text)
        if value is None:
            value = go_parse_float(text)
        return value is not None, value
    return False, None


# --- pkg/schema/python/module_scope.go ----------------------------------------------------


def cog_module_scope(source: str, tree: ast.Module) -> dict[str, object]:
    """module_scope.go collectModuleScope: top-level `NAME = literal` (last one wins)."""
    scope = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            ok, parsed = cog_default_value(source, value)
            if ok:
                scope[target.id] = parsed
    return scope


def cog_resolve_default(source: str, node: ast.expr, scope: dict) -> tuple[bool, object]:
    """module_scope.go resolveDefaultExpr: a literal, else a module constant."""
    ok, value = cog_default_value(source, node)
    if ok:
        return ok, value
    if isinstance(node, ast.Name) and node.id in scope:
        return True, scope[node.id]
    return False, None


def cog_resolve_string(source: str, node: ast.expr, scope: dict) -> str | None:
    """module_scope.go resolveStringExpr: a string literal, else a string module constant."""
    text = segment(source, node)
    if isinstance(node, ast.Constant | ast.JoinedStr):
        value = cog_string_literal(text)
        if value is not None:
            return value
    if isinstance(node, ast.Name) and isinstance(scope.get(node.id), str):
        return scope[node.id]
    return None


# --- pkg/schema/python/inputs.go ----------------------------------------------------------


def cog_input_call(source: str, call: ast.Call, scope: dict) -> dict[str, object]:
    """inputs.go parseInputCall: what Cog writes into the schema for one Input(...).

    Positional arguments are skipped. `default` falls back to None when unresolvable;
    `ge`/`le`/`min_length`/`max_length` take numeric literals only (parseNumberLiteral) and
    `regex` a string literal only, anything else is silently dropped; `default_factory`, and
    `choices` that cannot be resolved, are errors.
    """
    info: dict[str, object] = {}
    for kw in call.keywords:
        if kw.arg is None:
            continue
        value = kw.value
        if kw.arg == "default":
            ok, parsed = cog_resolve_default(source, value, scope)
            info["default"] = parsed if ok else None
        elif kw.arg == "default_factory":
            raise CogBuildError("default_factory is not supported in static schema generation")
        elif kw.arg == "description":
            if (text := cog_resolve_string(source, value, scope)) is not None:
                info["description"] = text
        elif kw.arg in ("ge", "le", "min_length", "max_length"):
            number = go_parse_float(segment(source, value))  # parseNumberLiteral
            if number is not None:
                info[kw.arg] = int(number) if kw.arg.endswith("length") else number
        elif kw.arg in ("regex", "accept"):
            text = cog_string_literal(segment(source, value))
            if isinstance(value, ast.Constant) and text is not None:
                info[kw.arg] = text
        elif kw.arg == "choices":
            ok, parsed = cog_default_value(source, value)  # parseListLiteral
            if not (ok and isinstance(value, ast.List)):
                ok, parsed = cog_resolve_default(source, value, scope)  # resolveChoicesExpr
                ok = ok and isinstance(parsed, list)
            if not ok:
                raise CogBuildError("choices expression cannot be statically resolved")
            info["choices"] = parsed
        elif kw.arg == "deprecated" and isinstance(getattr(value, "value", None), bool):
            info["deprecated"] = value.value
    return info


# --- pkg/schema/python/annotations.go -----------------------------------------------------


def cog_concurrent_max(source: str, fn: ast.AsyncFunctionDef | ast.FunctionDef) -> int | None:
    """annotations.go decoratorCogConcurrentMax: the `@concurrent(max=N)` Cog reads, or None.

    `concurrent` imported from cog, or `cog.concurrent`; bare or empty call means 1; otherwise
    exactly one keyword argument `max` whose value is an integer literal >= 1.
    """
    for decorator in fn.decorator_list:
        expr = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(expr) not in ("concurrent", "cog.concurrent"):
            continue
        if not isinstance(decorator, ast.Call) or not (decorator.args or decorator.keywords):
            return 1
        if decorator.args or len(decorator.keywords) != 1 or decorator.keywords[0].arg != "max":
            raise CogBuildError("@concurrent only supports literal integer max=... arguments")
        value = decorator.keywords[0].value
        ok, parsed = cog_default_value(source, value)
        if not ok or type(parsed) is not int:
            raise CogBuildError("@concurrent max must be an integer literal")
        if parsed < 1:
            raise CogBuildError("@concurrent max must be at least 1")
        return parsed
    return None


# --- reading predict.py --------------------------------------------------------------------


def predict_source() -> str:
    return (ROOT / "predict.py").read_text()


def predict_function(tree: ast.Module) -> ast.AsyncFunctionDef | ast.FunctionDef:
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Predictor")
    return next(
        n
        for n in cls.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "predict"
    )


def static_inputs(source: str) -> dict[str, dict[str, object]]:
    """inputs.go extractInputs + parseTypedDefaultParameter for predict()'s parameters."""
    tree = ast.parse(source)
    scope = cog_module_scope(source, tree)
    fn = predict_function(tree)
    params = fn.args.args[1:]  # self
    defaults = dict(
        zip(params[len(params) - len(fn.args.defaults) :], fn.args.defaults, strict=True)
    )
    out = {}
    for param in params:
        if param.annotation is None:
            raise CogBuildError(f"parameter '{param.arg}' on predict has no type annotation")
        call = defaults.get(param)
        assert isinstance(call, ast.Call) and ast.unparse(call.func) == "Input", param.arg
        out[param.arg] = cog_input_call(source, call, scope) | {
            "type": ast.unparse(param.annotation)
        }
    return out


@pytest.fixture(scope="module")
def predict_module():
    import predict

    return predict


def runtime_inputs(predict_module) -> dict[str, dict[str, object]]:
    """What Python makes of the same Input() calls (cog.input.FieldInfo)."""
    import inspect

    params = inspect.signature(predict_module.Predictor.predict).parameters
    return {
        name: {key: getattr(p.default, key, None) for key in INPUT_KEYWORDS}
        for name, p in params.items()
        if name != "self"
    }


def differences(keys: tuple[str, ...], static: dict, runtime: dict) -> list[str]:
    """Input keywords whose schema value (Cog) differs from the Python value."""
    out = []
    for name, python in runtime.items():
        for key in keys:
            want, got = python.get(key), static[name].get(key)
            if want != got or (type(want) is str and type(got) is not str):
                out.append(f"{name}.{key}: Python {want!r}, Cog's schema {got!r}")
    return out


# --- the package -----------------------------------------------------------------------------


def test_concurrency_is_an_integer_literal_cog_reads(predict_module):
    """annotations.go decoratorCogConcurrentMax; parser.go resolveOutputPhase (async for > 1);
    image/build.go configWithDecoratorConcurrency (cog.yaml `concurrency` would win).

    Fault seen failing: `@concurrent(max=MAX_CONCURRENCY)` (a name fails the build).
    """
    source = predict_source()
    fn = predict_function(ast.parse(source))
    built = cog_concurrent_max(source, fn)  # -> ENV COG_MAX_CONCURRENCY in the image
    assert built == predict_module.Predictor.predict.__cog_concurrent_max__
    assert built == predict_module.MAX_CONCURRENCY
    assert built >= 2, "cross-request batching needs more than one request at a time"
    assert isinstance(fn, ast.AsyncFunctionDef), "@concurrent(max > 1) requires async predict"
    cfg = cog_yaml()
    assert "concurrency" not in cfg, "cog.yaml concurrency.max overrides the decorator"
    assert not any(e.startswith("COG_MAX_CONCURRENCY=") for e in cfg.get("environment") or [])


def test_docs_state_the_concurrency_the_image_runs_with():
    """The README's deployment section and docs/operations.md's concurrency section state the
    number the image runs with, and no page states another.

    Fault seen failing: the literal changed to 8 while the README says 16."""
    source = predict_source()
    built = cog_concurrent_max(source, predict_function(ast.parse(source)))
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(p.read_text() for p in pages)
    claims = re.findall(r"@concurrent\(max=(\d+)\)|COG_MAX_CONCURRENCY=(\d+)", text)
    for name, heading in [
        ("README.md", "## Deploying your own"),
        ("docs/operations.md", "## Concurrency: serving many callers"),
    ]:
        section = (ROOT / name).read_text().split(heading, 1)[1].split("\n## ", 1)[0]
        assert f"COG_MAX_CONCURRENCY={built}" in section, f"{name} {heading!r} states it"
    assert claims and {int(a or b) for a, b in claims} == {built}


def test_numeric_bounds_are_literals_cog_keeps(predict_module):
    """inputs.go parseInputCall -> literals.go parseNumberLiteral: ge/le/min_length/max_length
    take numeric literals only; a name or an expression is dropped from the schema silently.

    Fault seen failing: `le=MAX_LENGTH_LIMIT`.
    """
    keys = ("ge", "le", "min_length", "max_length")
    bad = differences(keys, static_inputs(predict_source()), runtime_inputs(predict_module))
    assert not bad, "\n".join(bad)
    assert static_inputs(predict_source())["max_length"]["le"] == predict_module.MAX_LENGTH_LIMIT


def test_strings_reach_the_schema_as_python_reads_them(predict_module):
    """literals.go parseStringLiteral (raw text between the first and the last quote; no escapes,
    no implicit joining, f/b-strings dropped); module_scope.go resolveStringExpr (a literal or a
    string constant of the module); inputs.go parseInputCall (positional arguments skipped).

    Faults seen failing: a description written as two adjacent literals; one with `\\u00e9`;
    a description passed positionally.
    """
    keys = ("description", "regex")
    static = static_inputs(predict_source())
    bad = differences(keys, static, runtime_inputs(predict_module))
    assert not bad, "\n".join(bad)
    for name, info in static.items():
        assert isinstance(info.get("description"), str) and info["description"].strip(), name


def test_defaults_and_choices_resolve_statically(predict_module):
    """inputs.go parseInputCall: `default` is a literal or a module constant
    (module_scope.go resolveDefaultExpr), else the schema says null; `default_factory` and
    unresolvable `choices` fail the build.

    Fault seen failing: `default=config.DEFAULT_TOP_K` (an attribute, not a module constant).
    """
    keys = ("default", "choices", "deprecated")
    bad = differences(keys, static_inputs(predict_source()), runtime_inputs(predict_module))
    assert not bad, "\n".join(bad)


def test_input_types_are_ones_cog_accepts():
    """inputs.go extractInputs (a parameter needs an annotation); types.go ResolveInputType."""
    for name, info in static_inputs(predict_source()).items():
        assert info["type"] in INPUT_TYPES, f"{name}: {info['type']}"


def test_output_model_resolves_from_predict_py(predict_module):
    """models.go collectModelClasses + InheritsFromBaseModel (a base named BaseModel, or
    x.BaseModel); schema_type.go ResolveSchemaType (no Optional or union at the top; model
    fields may be `X | None`). A model imported from a package __init__ is not resolved
    (integration-tests/tests/static_schema_unresolvable_fails.txtar), so models live here.

    Fault seen failing: `class Usage(Base)` with `Base = BaseModel` (runs, but Cog does not
    see a model).
    """
    source = predict_source()
    tree = ast.parse(source)
    models = {
        n.name: n
        for n in tree.body
        if isinstance(n, ast.ClassDef)
        and any(
            ast.unparse(b) == "BaseModel" or ast.unparse(b).endswith(".BaseModel") for b in n.bases
        )
    }
    primitives = {"str", "int", "float", "bool", "Path", "File", "Secret", "Any"}

    def resolve(node: ast.expr, field: bool) -> object:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            members = [node.left, node.right]
            if field and any(ast.unparse(m) == "None" for m in members):
                (inner,) = [m for m in members if ast.unparse(m) != "None"]
                return resolve(inner, field=False)
            raise CogBuildError(f"unsupported output type: {ast.unparse(node)}")
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("list", "List"):
            return [resolve(node.slice, field=False)]
        if isinstance(node, ast.Name) and node.id in models:
            fields = {}
            for stmt in models[node.id].body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    fields[stmt.target.id] = resolve(stmt.annotation, field=True)
            return (node.id, fields)
        if isinstance(node, ast.Name) and node.id in primitives:
            return node.id
        raise CogBuildError(f"cannot resolve type {ast.unparse(node)}")

    def check(resolved: object, cls: type) -> None:
        """Cog's view of each model has the fields pydantic has."""
        name, fields = resolved
        assert name == cls.__name__ and set(fields) == set(cls.model_fields), name
        for field, value in fields.items():
            if isinstance(value, list):
                value = value[0]
            if isinstance(value, tuple):
                annotation = cls.model_fields[field].annotation
                check(value, getattr(annotation, "__args__", (annotation,))[0])

    check(resolve(predict_function(tree).returns, field=False), predict_module.Output)


# --- cog.yaml ----------------------------------------------------------------------------------


def cog_yaml() -> dict:
    return yaml.safe_load((ROOT / "cog.yaml").read_text())


def json_schema_errors(value: object, schema: dict, root: dict, path: str = "") -> list[str]:
    """The subset of JSON Schema that Cog's config schema uses (gojsonschema in validate.go)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    errors = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        checks = {
            "string": lambda v: isinstance(v, str),
            "boolean": lambda v: isinstance(v, bool),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "array": lambda v: isinstance(v, list),
            "object": lambda v: isinstance(v, dict),
            "null": lambda v: v is None,
        }
        if not any(checks[k](value) for k in kinds):
            return [f"{path or '/'}: {value!r} is not {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}/{key}: required")
        for key, item in value.items():
            if key in props:
                errors += json_schema_errors(item, props[key], root, f"{path}/{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}/{key}: not a key Cog knows")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += json_schema_errors(item, schema["items"], root, f"{path}/{i}")
    if isinstance(value, list) and len(value) < schema.get("minItems", 0):
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    for key, need in (("anyOf", 1), ("oneOf", 1)):
        if key in schema:
            passing = sum(not json_schema_errors(value, s, root, path) for s in schema[key])
            if passing < need or (key == "oneOf" and passing > 1):
                errors.append(f"{path}: {key} not satisfied")
    if "not" in schema and not json_schema_errors(value, schema["not"], root, path):
        errors.append(f"{path}: matches a forbidden combination {schema['not']}")
    return errors


def test_cog_yaml_passes_cogs_validation():
    """pkg/config/validate.go ValidateConfigFile: validateSchema (config_schema_v1.0.json,
    unknown keys rejected), validatePredict/validatePredictRef, validateBuild
    (validatePythonVersion >= 3.10, validateCUDAVersion >= 11, python_packages xor
    python_requirements, requirements file exists), validateConcurrency (3.11+ for > 1).

    Fault seen failing: a misspelt key (`build.python_verison`).
    """
    cfg = cog_yaml()
    schema = json.loads(COG_SCHEMA.read_text())
    errors = json_schema_errors(cfg, schema, schema)
    assert not errors, "\n".join(errors)
    build = cfg["build"]
    major, minor = map(int, str(build["python_version"]).split(".")[:2])
    assert (major, minor) >= (3, 11)  # 3.10 for Cog, 3.11 for concurrent predictions
    assert re.fullmatch(r"\d+\.\d+", build["cuda"]) and int(build["cuda"].split(".")[0]) >= 11
    assert not build.get("python_packages") and (ROOT / build["python_requirements"]).is_file()
    module, _, cls = cfg["predict"].partition(".py:")
    assert cls and f"class {cls}(" in (ROOT / f"{module}.py").read_text()
    assert build["gpu"] is True


def test_torch_and_cuda_are_a_pair_cog_lists():
    """config.go validateAndCompleteCUDA / torchGPUPackage and torch_compatibility.json."""
    reqs = (ROOT / "requirements.txt").read_text()
    torch = re.search(r"^torch==([\w.+]+)", reqs, re.M).group(1)
    build = cog_yaml()["build"]
    assert torch in COG_TORCH_CUDA, f"Cog's matrix has no torch {torch}"
    assert build["cuda"] in COG_TORCH_CUDA[torch]
    assert build["python_version"] in COG_TORCH_PYTHONS[torch]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"torch=={torch}" in pyproject["project"]["dependencies"]


def test_sdk_version_matches_the_cog_used_in_tests():
    lock = (ROOT / "uv.lock").read_text()
    locked = re.search(r'\[\[package\]\]\nname = "cog"\nversion = "([^"]+)"', lock).group(1)
    assert cog_yaml()["build"]["sdk_version"] == locked


def test_pget_download_names_a_real_release_asset():
    """replicate/pget .goreleaser.yaml (v0.11.0, as in v0.10.2; archives.name_template):
    `{{ .ProjectName }}_{{ title .Os }}_x86_64` for linux/amd64, i.e. pget_Linux_x86_64.

    Fault seen failing: `pget_linux_x86_64` (a 404, so the build's curl fails).
    """
    runs = " ".join(r if isinstance(r, str) else r["command"] for r in cog_yaml()["build"]["run"])
    url = re.search(r"https://github\.com/replicate/pget/releases/download/(\S+)", runs)
    assert url, "cog.yaml installs pget"
    version, asset = url.group(1).split("/")
    assert re.fullmatch(r"v\d+\.\d+\.\d+", version)
    assert asset in ("pget_" + "linux".title() + "_x86_64", "pget_$(uname -s)_$(uname -m)")


# --- .dockerignore -----------------------------------------------------------------------------


def dockerignore_patterns(text: str) -> list[str]:
    """moby/patternmatcher ignorefile.ReadAll: comments, blanks, Clean, leading / dropped."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        pattern = line.strip()
        invert = pattern.startswith("!")
        pattern = pattern[1:].strip() if invert else pattern
        pattern = str(Path(pattern)) if pattern not in (".", "") else pattern  # filepath.Clean
        pattern = pattern[1:] if len(pattern) > 1 and pattern.startswith("/") else pattern
        out.append("!" + pattern if invert else pattern)
    return out


def pattern_regex(pattern: str) -> re.Pattern:
    """moby/patternmatcher Pattern.compile: ** spans directories, * and ? stay within one."""
    out, i = "^", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def docker_excludes(patterns: list[str], path: str) -> bool:
    """moby/patternmatcher PatternMatcher.MatchesOrParentMatches: a pattern matching the path
    or one of its parent directories excludes it; later `!` patterns re-include."""
    parts = path.split("/")
    candidates = [path] + ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
    matched = False
    for pattern in patterns:
        exclusion = pattern.startswith("!")
        if exclusion != matched:
            continue
        regex = pattern_regex(pattern.lstrip("!"))
        if any(regex.match(c) for c in candidates):
            matched = not exclusion
    return matched


def test_build_context_is_what_the_image_needs():
    """`cog build` sends the project directory as the Docker build context and copies it
    (pkg/dockerfile/standard_generator.go: `COPY . /src`), filtered by .dockerignore.

    Fault seen failing: .dockerignore without `tiny-model/` (the README's quick start writes it).
    """
    patterns = dockerignore_patterns((ROOT / ".dockerignore").read_text())
    sent = [
        "predict.py",
        "cog.yaml",
        "requirements.txt",
        "reranker/model/engine.py",
        "reranker/serve/app.py",
        "weights/config.json",
        "weights/model-00001-of-00004.safetensors",
    ]
    kept_out = [
        ".git/HEAD",
        ".venv/bin/python",
        "tiny-model/model.safetensors",
        "reranker/model/__pycache__/engine.cpython-312.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/0.8/x",
        ".hypothesis/examples/x",
        ".cache/huggingface/hub/x",
        ".cog/openapi_schema.json",
        "tests/test_api.py",
        "tests/envs/langchain/.venv/bin/python",
        "devtools/offline.py",
        "tools/drift/command.py",
        "bench/out/load.json",
        "bench/results/cpu.md",
        ".whl/torch.whl",
        ".gpu/out.json",
        "qwen3-reranker-8b.tar",
        ".env",
    ]
    assert [p for p in sent if docker_excludes(patterns, p)] == []
    assert [p for p in kept_out if not docker_excludes(patterns, p)] == []
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert "weights/" in gitignore and ".venv/" in gitignore and "tiny-model/" in gitignore


def test_predict_inputs_are_the_request_options():
    """Cog reads predict.py's defaults statically, so they are literals there: they must
    stay the options type's (reranker.options), input for input, with the same bounds and
    choices; an option missing from predict.py (or an input that is no option) fails.
    Faults seen failing: DEFAULT_BATCH_SIZE = 128 in predict.py; `le=32767` on max_length;
    an option added to RerankOptions only."""
    from reranker.request.options import SAME, specs
    from reranker.text.prompt import resolve_instruction

    static = static_inputs(predict_source())
    assert set(static) - {"query", "documents"} == {name for name, _, _ in specs()}
    for name, option, default in specs():
        got = static[name]
        want = default if option.cog_default is SAME else option.cog_default
        if name == "instruction":  # None is the model card's instruction, spelled out for Cog
            want = resolve_instruction(want)
        assert got.get("default") == want, (name, got.get("default"), want)
        assert got.get("ge") == option.low and got.get("le") == option.high, name
        assert tuple(got.get("choices") or ()) == option.choices, name
