"""What the rerank command reads (the documents file, stdin, --model) and how it writes JSON."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from reranker.cli.documents_file import load_documents, read_documents
from reranker.cli.main import write_json
from reranker.loading.weights import model_argument

BOM = b"\xef\xbb\xbf"


def run(args, stdin: bytes | None = None, env=None, cwd=None):
    """The CLI as a user runs it; bytes in and out, so that encodings are what is tested."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    environ["HF_HUB_OFFLINE"] = "1"  # a wrongly accepted --model fails fast, not on the network
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "reranker", *args],
        input=stdin,
        capture_output=True,
        env=environ,
        cwd=cwd,
        timeout=120,
    )


# -- byte-order mark ----------------------------------------------------------------------------


def test_a_byte_order_mark_is_ignored_in_a_file(tmp_path):
    json_file = tmp_path / "docs.json"
    json_file.write_bytes(BOM + b'["a", "b"]')
    assert load_documents(str(json_file), "auto", None) == ["a", "b"]
    assert load_documents(str(json_file), "json", None) == ["a", "b"]
    lines_file = tmp_path / "docs.txt"
    lines_file.write_bytes(BOM + b"first\nsecond\n")
    assert load_documents(str(lines_file), "auto", None) == ["first", "second"]


@pytest.mark.subprocess
def test_a_byte_order_mark_is_ignored_on_stdin(model_dir):
    proc = run(
        ["--model", str(model_dir), "--query", "q", "--documents", "-", "--device", "cpu"],
        stdin=BOM + b'["alpha", "beta"]',
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["total_documents"] == 2
    assert sorted(r["document"] for r in out["results"]) == ["alpha", "beta"]


# -- lines -------------------------------------------------------------------------------------


def test_lines_end_at_lf_and_crlf_only():
    text = "a\x0cb\nc\x0bd\r\ne\u2028f\u2029g\n\x1ch\x1di\x1ej\x85k\nl\rm\n"
    want = ["a\x0cb", "c\x0bd", "e\u2028f\u2029g", "\x1ch\x1di\x1ej\x85k", "l\rm"]
    assert read_documents(text, "lines") == want
    assert read_documents(text, "auto") == read_documents(text, "lines")


def test_whitespace_only_lines_are_skipped():
    assert read_documents("a\n \t\n\n\r\n\x0c\nb\r\n", "lines") == ["a", "b"]


def test_bracket_led_lines_are_documents_under_lines():
    text = "[INFO] server started\n[1] Smith, J. (2020)\n"
    assert read_documents(text, "lines") == ["[INFO] server started", "[1] Smith, J. (2020)"]
    assert read_documents('["a"]', "lines") == ['["a"]']


def test_auto_names_the_file_and_hints_lines_when_bracket_text_is_not_json():
    with pytest.raises(ValueError) as info:
        read_documents("[INFO] server started\n", "auto", "server.log")
    message = str(info.value)
    assert message.startswith("--documents server.log: starts with '[' but is not valid JSON")
    assert "pass --documents-format lines" in message


def test_text_that_only_looks_like_json_is_lines():
    text = '"Quoted sentence," he said.\n{braces} in prose\n42 is the answer\n'
    assert read_documents(text, "auto") == text.splitlines()


# -- JSON values that are not an array of strings -----------------------------------------------


@pytest.mark.parametrize(
    "text,kind",
    [
        ('{"query": "q", "documents": ["a", "b"]}', "got a JSON object"),
        ('  "one string"\n', "got a JSON string"),
        ("42", "got a JSON number"),
        ("true", "got a JSON boolean"),
        ("null", "got JSON null"),
        ('["a", 1]', "but documents[1] is a JSON number"),
        ('["a", ["b"]]', "but documents[1] is a JSON array"),
    ],
)
@pytest.mark.parametrize("documents_format", ["auto", "json"])
def test_json_that_is_not_an_array_of_strings_is_an_error(text, kind, documents_format):
    with pytest.raises(ValueError) as info:
        read_documents(text, documents_format, "saved.json")
    assert str(info.value).startswith(
        f"--documents saved.json: expected a JSON array of strings, {kind}"
    )


def test_a_saved_request_body_gets_a_hint():
    with pytest.raises(ValueError, match="pass only its documents array"):
        read_documents('{"input": {"query": "q", "documents": ["a"]}}', "auto", "body.json")


def test_json_format_requires_json():
    with pytest.raises(ValueError, match=r"^--documents d\.txt: not valid JSON"):
        read_documents("one\ntwo\n", "json", "d.txt")


def test_pathological_json_is_a_clear_error_not_a_crash():
    with pytest.raises(ValueError, match=r"^--documents deep\.json: .*not valid JSON"):
        read_documents("[" * 100_000, "auto", "deep.json")
    with pytest.raises(ValueError, match=r"^--documents digits\.json: .*not valid JSON"):
        read_documents("[" + "9" * 5000 + "]", "auto", "digits.json")


# -- files -------------------------------------------------------------------------------------


def test_an_undecodable_file_is_named(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("Café\nthé\n".encode("latin-1"))
    with pytest.raises(ValueError) as info:
        load_documents(str(f), "auto", None)
    assert str(info.value) == (
        f"--documents {f}: not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8"
    )


def test_a_missing_documents_file_is_named(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError) as info:
        load_documents(str(missing), "auto", None)
    assert str(info.value) == f"--documents {missing}: no such file"
    with pytest.raises(ValueError, match=rf"^--documents {tmp_path}: Is a directory$"):
        load_documents(str(tmp_path), "auto", None)


def test_stdin_without_bytes_underneath():
    assert load_documents("-", "auto", io.StringIO("\ufeffa\nb\n")) == ["a", "b"]
    with pytest.raises(ValueError, match="no standard input"):
        load_documents("-", "auto", None)


# -- --model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hub_id", ["Qwen/Qwen3-Reranker-8B", "BAAI/bge-reranker-v2-m3", "my_org/model.v2"]
)
def test_hub_ids_pass_through(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_argument(hub_id) == hub_id


def test_directories_pass_with_the_home_expanded(tmp_path, monkeypatch):
    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert model_argument("models/m") == "models/m"
    assert model_argument("~/models/m") == str(tmp_path / "models" / "m")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^--model: not a directory: file$"):
        model_argument("file")


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "model", ["./no-such-model", "/no/such/model", "models/x/y", "tiny-model", "~/nope", "a--b/c"]
)
def test_a_missing_model_path_says_so(model, tmp_path):
    proc = run(["--model", model, "--query", "q", "--documents", "-"], stdin=b"a\n", cwd=tmp_path)
    assert proc.returncode == 1
    stderr = proc.stderr.decode()
    assert stderr == (
        f"rerank: error: --model: no such directory: {model} "
        "(and not a hub id of the form owner/name)\n"
    )
    assert proc.stdout == b""


# -- stdout ------------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_a_non_utf8_stdout_gets_ascii_json(model_dir):
    docs = ["Café au lait", "北京是中国的首都。", "plain"]
    proc = run(
        ["--model", str(model_dir), "--query", "Où?", "--documents", "-", "--device", "cpu"],
        stdin=json.dumps(docs, ensure_ascii=False).encode("utf-8"),
        env={"PYTHONIOENCODING": "ascii"},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.isascii()
    out = json.loads(proc.stdout)
    assert sorted(r["document"] for r in out["results"]) == sorted(docs)


def test_write_json_keeps_utf8_readable_and_never_fails():
    value = {"document": "北京 café"}
    utf8 = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    write_json(value, utf8)
    utf8.flush()
    assert "北京 café".encode() in utf8.buffer.getvalue()
    for encoding in ("latin-1", "ascii"):
        stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding)
        write_json(value, stream)
        stream.flush()
        assert json.loads(stream.buffer.getvalue().decode("ascii")) == value
    lone = {"document": "x\ud800y"}  # a Python str can hold it; UTF-8 cannot
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    write_json(lone, stream)
    stream.flush()
    assert json.loads(stream.buffer.getvalue()) == lone
