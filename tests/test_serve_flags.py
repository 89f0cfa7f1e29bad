"""``rerank serve``'s flags and settings, checked in-process: they are parsed before uvicorn or
the model is imported, so no server process is needed (the process boundary is
tests/test_serve_lifecycle.py's). Fault seen failing: the seconds bound accepting 0 (the
header timeout cases; the server then started)."""

from __future__ import annotations

import pytest

from reranker.serve import command


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--model", "/no/such/dir"], {}, "--model: no such directory: /no/such/dir"),
        (["--device", "tpu"], {}, "--device must be cpu, cuda or cuda:N"),
        (["--max-body-bytes", "0"], {}, "--max-body-bytes must be a positive integer"),
        (["--body-timeout", "-1"], {}, "--body-timeout must be a positive number of seconds"),
        (["--header-timeout", "0"], {}, "--header-timeout must be a positive number of seconds"),
        ([], {"RERANKER_BODY_TIMEOUT": "soon"}, "RERANKER_BODY_TIMEOUT must be a positive"),
        ([], {"RERANKER_HEADER_TIMEOUT": "inf"}, "RERANKER_HEADER_TIMEOUT must be a positive"),
        (
            [],
            {"RERANKER_MAX_CONCURRENT_REQUESTS": "lots"},
            "RERANKER_MAX_CONCURRENT_REQUESTS must be a positive integer, not 'lots'",
        ),
    ],
)
def test_bad_flags_and_settings_fail_before_loading(args, env, message, capsys):
    """In-process: what is tested is the parsing, which runs before uvicorn or the model is
    imported (the process boundary is test_a_failed_load_is_one_line_and_exit_1's)."""
    assert command.main(args, environ=env) == 2
    err = capsys.readouterr().err
    assert f"rerank serve: error: {message}" in err and "Traceback" not in err, err
