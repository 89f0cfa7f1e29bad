"""What `cog build` would reject, checked without Docker or the Go CLI.

Facts below come from Cog's source, replicate/cog @ 6110c912 (2026-08-21):
pkg/config/data/config_schema_v1.0.json (allowed keys), pkg/config/config.go (Python >= 3.10,
3.11+ for concurrency; CUDA >= 11), pkg/config/torch_compatibility.json (torch/CUDA pairs),
pkg/schema/python/module_scope.go (Input() arguments resolve only literals and module-level
literal constants) and integration-tests/tests/static_schema_unresolvable_fails.txtar (output
types must be defined in the predictor's own file, not a package __init__).
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL_KEYS = {"build", "concurrency", "environment", "image", "model", "predict", "run"}
TOP_LEVEL_KEYS |= {"train", "weights"}
BUILD_KEYS = {"cuda", "cudnn", "gpu", "pre_install", "python_packages", "python_requirements"}
BUILD_KEYS |= {"python_version", "run", "sdk_version", "system_packages"}
# torch version -> CUDA versions with a wheel index in Cog's compatibility matrix (2.7 onwards).
COG_TORCH_CUDA = {
    "2.7.0": {"11.8", "12.6", "12.8"},
    "2.7.1": {"11.8", "12.6", "12.8"},
    "2.8.0": {"12.6", "12.8", "12.9"},
    "2.9.0": {"12.6", "12.8", "13.0"},
    "2.9.1": {"12.6", "12.8", "13.0"},
}
COG_TORCH_PYTHONS = {"2.9.1": {"3.10", "3.11", "3.12", "3.13", "3.14"}}
INPUT_TYPES = {"str", "int", "float", "bool", "list[str]", "Path", "Secret"}


def cog_yaml() -> dict:
    return yaml.safe_load((ROOT / "cog.yaml").read_text())


def predict_module() -> ast.Module:
    return ast.parse((ROOT / "predict.py").read_text())


def module_constants(tree: ast.Module) -> dict[str, object]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
                out[target.id] = node.value.value
    return out


def predict_function(tree: ast.Module) -> ast.AsyncFunctionDef | ast.FunctionDef:
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Predictor")
    return next(
        n
        for n in cls.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "predict"
    )


def static_value(node: ast.expr, constants: dict) -> object:
    """A literal, a negated literal or a module constant; anything else Cog cannot read."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -static_value(node.operand, constants)
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    raise AssertionError(f"not static: {ast.unparse(node)}")


def test_cog_yaml_keys_and_values():
    cfg = cog_yaml()
    assert set(cfg) <= TOP_LEVEL_KEYS
    build = cfg["build"]
    assert set(build) <= BUILD_KEYS
    assert build["gpu"] is True
    assert isinstance(build["python_version"], str)
    major, minor = map(int, build["python_version"].split(".")[:2])
    assert (major, minor) >= (3, 11)  # 3.10+ for Cog, 3.11+ for concurrent predictions
    assert build["python_requirements"] == "requirements.txt"
    assert "python_packages" not in build  # exclusive with python_requirements
    assert cfg["predict"] == "predict.py:Predictor"
    assert re.fullmatch(r"\d+\.\d+", build["cuda"]) and int(build["cuda"].split(".")[0]) >= 11


def test_torch_and_cuda_are_a_pair_cog_lists():
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


def test_inputs_are_static_typed_and_described():
    tree = predict_module()
    constants = module_constants(tree)
    fn = predict_function(tree)
    params = fn.args.args[1:]  # self
    defaults = dict(
        zip(params[len(params) - len(fn.args.defaults) :], fn.args.defaults, strict=True)
    )
    assert params, "predict() takes inputs"
    for param in params:
        assert ast.unparse(param.annotation) in INPUT_TYPES, ast.unparse(param.annotation)
        call = defaults.get(param)
        assert isinstance(call, ast.Call) and ast.unparse(call.func) == "Input", param.arg
        assert not call.args, f"{param.arg}: Input() takes keyword arguments only"
        kwargs = {kw.arg: static_value(kw.value, constants) for kw in call.keywords}
        assert isinstance(kwargs.get("description"), str) and kwargs["description"].strip()
        assert "default_factory" not in kwargs


def test_concurrency_is_static_and_async():
    tree = predict_module()
    fn = predict_function(tree)
    assert isinstance(fn, ast.AsyncFunctionDef)
    (decorator,) = fn.decorator_list
    assert ast.unparse(decorator.func) == "concurrent"
    (kw,) = decorator.keywords
    assert kw.arg == "max" and static_value(kw.value, module_constants(tree)) >= 2


def test_output_models_are_defined_in_predict_py():
    tree = predict_module()
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    builtin = {"str", "int", "float", "bool", "None"}

    def check(annotation: str, seen: set[str]):
        for name in re.findall(r"[A-Za-z_]\w*", annotation):
            if name in builtin or name == "list":
                continue
            assert name in classes, f"output type {name} is not defined in predict.py"
            if name in seen:
                continue
            seen.add(name)
            cls = classes[name]
            assert [ast.unparse(b) for b in cls.bases] == ["BaseModel"]
            for stmt in cls.body:
                if isinstance(stmt, ast.AnnAssign):
                    check(ast.unparse(stmt.annotation), seen)

    check(ast.unparse(predict_function(tree).returns), set())
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "pydantic"]
    assert imports and "BaseModel" in [a.name for a in imports[0].names]


def test_ignore_files_keep_weights_and_caches_out():
    def patterns(name):
        lines = (ROOT / name).read_text().splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    gitignore, dockerignore = patterns(".gitignore"), patterns(".dockerignore")
    assert "weights/" in gitignore and ".venv/" in gitignore and "__pycache__/" in gitignore
    assert ".venv/" in dockerignore and ".git/" in dockerignore
    assert "weights/" not in dockerignore  # baked weights must reach the image
