"""Run a snippet in a fresh interpreter, so that a crash (segfault, abort) fails one test, not the whole run.

    expect_error('fastops.roi_align(torch.randn(1, 1, 0, 4), boxes, 1)', ValueError, "input")
    expect_ok('out = fastops.nms(b, s, 0.5); assert out.numel() == 0')

The snippet runs after `import torch, torchvision, fastops` (and `math`); TRITON_INTERPRET is inherited.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_PRELUDE = "import math\nimport torch\nimport torchvision\nimport fastops\n"
_ERROR_PROBE = """
try:
{body}
except BaseException as exc:  # report the type and message, for the parent to check
    print("RAISED", type(exc).__module__ + "." + type(exc).__qualname__, "|", str(exc).replace("\\n", " ")[:2000])
    for base in type(exc).__mro__:
        print("MRO", base.__module__ + "." + base.__qualname__)
else:
    print("NO-ERROR")
"""


def run_isolated(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("TRITON_INTERPRET", "1")
    return subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _describe(proc) -> str:
    return f"exit code {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def expect_error(code: str, exc_type: type, match: str = "", timeout: float = 120.0) -> str:
    """The snippet raises `exc_type` (or a subclass) whose message contains `match`; returns the message."""
    body = textwrap.indent(textwrap.dedent(code), "    ")
    proc = run_isolated(_ERROR_PROBE.format(body=body), timeout)
    assert proc.returncode == 0, f"crashed instead of raising {exc_type.__name__}: {_describe(proc)}"
    lines = proc.stdout.splitlines()
    raised = [ln for ln in lines if ln.startswith("RAISED ")]
    assert raised, f"no exception raised (wanted {exc_type.__name__}): {_describe(proc)}"
    mro = {ln[4:] for ln in lines if ln.startswith("MRO ")}
    want = f"{exc_type.__module__}.{exc_type.__qualname__}"
    head, _, message = raised[0][len("RAISED "):].partition(" | ")
    assert want in mro, f"raised {head} ({message!r}), wanted {want}"
    assert match.lower() in message.lower(), f"message {message!r} does not mention {match!r}"
    return message


def expect_ok(code: str, timeout: float = 120.0) -> str:
    """The snippet runs to the end (its own asserts check the result); returns its stdout."""
    proc = run_isolated(code, timeout)
    assert proc.returncode == 0, _describe(proc)
    return proc.stdout
