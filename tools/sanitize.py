"""`make sanitize`: build the CPU extension with AddressSanitizer + UBSan and run the tests under it.

The sanitized fastops._C is built out of place (build/sanitize/lib, objects in build/sanitize/temp), so the
normal in-place fastops/_C*.so is left alone. The tests import it through an overlay package,
build/sanitize/site/fastops/, whose entries are symlinks to the source package's files except _C, which is the
sanitized build; build/sanitize/site goes first on PYTHONPATH (subprocesses of the tests inherit it).

The Python interpreter is not instrumented, so the ASan runtime is LD_PRELOADed. Any report fails the run:
UBSan is built with -fno-sanitize-recover (abort at the first report), ASan aborts at its first report too, and
every report is also written to build/sanitize/reports/ (log_path), which must stay empty: a report in a
subprocess whose test did not notice the crash still fails `make sanitize`.

Usage: python tools/sanitize.py [--no-build] [pytest args...]   (default pytest args: tests -q -x)
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "sanitize")
LIB, TEMP, SITE, REPORTS = (os.path.join(OUT, d) for d in ("lib", "temp", "site", "reports"))

# Tests that cannot run under ASan in this environment (each with the reason); everything else runs.
DESELECT = {
    # -k expression pieces appended with "and not ...": none needed so far.
}


def _runtime(name):
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        sys.exit(f"sanitize: {name} not found (gcc -print-file-name); install gcc's sanitizer runtimes")
    return os.path.realpath(path)


def build():
    env = dict(os.environ, FASTOPS_SANITIZE="1", FASTOPS_CUDA="0")
    env["PATH"] = os.path.join(ROOT, ".venv", "bin") + os.pathsep + env.get("PATH", "")
    t0 = time.time()
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", TEMP, "--build-lib", LIB],
                   cwd=ROOT, env=env, check=True)
    print(f"sanitize: built in {time.time() - t0:.0f} s")


def overlay():
    """build/sanitize/site/fastops: the source package with the sanitized _C in place of the in-place build."""
    so = glob.glob(os.path.join(LIB, "fastops", "_C*.so"))
    if not so:
        sys.exit("sanitize: no sanitized fastops/_C*.so under build/sanitize/lib (run without --no-build)")
    pkg = os.path.join(SITE, "fastops")
    shutil.rmtree(pkg, ignore_errors=True)
    os.makedirs(pkg)
    src = os.path.join(ROOT, "fastops")
    for name in os.listdir(src):
        if name.startswith("_C") and name.endswith(".so") or name == "__pycache__":
            continue
        os.symlink(os.path.join(src, name), os.path.join(pkg, name))
    os.symlink(os.path.join(ROOT, "models"), os.path.join(pkg, "models"))  # fastops.models, as installed
    os.symlink(so[0], os.path.join(pkg, os.path.basename(so[0])))
    return pkg


def run_tests(pytest_args):
    shutil.rmtree(REPORTS, ignore_errors=True)
    os.makedirs(REPORTS)
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join([_runtime("libasan.so"), _runtime("libubsan.so")] +
                                 ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    # detect_leaks=0: CPython and torch keep allocations alive at exit by design (not our leaks).
    # allocator_may_return_null=1: tests that ask for absurd sizes expect torch's own error, not an ASan abort.
    env["ASAN_OPTIONS"] = ":".join([
        "detect_leaks=0", "allocator_may_return_null=1", "halt_on_error=1", "abort_on_error=1",
        "detect_odr_violation=0", f"log_path={REPORTS}/asan", "print_summary=1"])
    env["UBSAN_OPTIONS"] = f"halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path={REPORTS}/ubsan"
    env["PYTHONPATH"] = SITE + os.pathsep + env.get("PYTHONPATH", "")
    env["FASTOPS_SANITIZED"] = "1"
    # The tests' fresh interpreters (tests/isolated.py) inherit all of the above.
    # Run from the overlay: `python -c` / `python -m` put the working directory first on sys.path, and from the
    # source root that would be the in-place package.
    probe = subprocess.run([sys.executable, "-c", "import fastops, fastops._C as c; print(c.__file__)"],
                           cwd=SITE, env=env, capture_output=True, text=True)
    if probe.returncode or not probe.stdout.strip().startswith(SITE):
        sys.exit(f"sanitize: the overlay is not what gets imported:\n{probe.stdout}\n{probe.stderr}")
    print(f"sanitize: fastops._C = {probe.stdout.strip()}")
    args = [os.path.join(ROOT, a) if not a.startswith("-") and os.path.exists(os.path.join(ROOT, a.split("::")[0]))
            else a for a in pytest_args]
    t0 = time.time()
    rc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", ROOT, *args],
                        cwd=SITE, env=env).returncode
    reports = sorted(glob.glob(os.path.join(REPORTS, "*")))
    print(f"sanitize: pytest exit {rc} in {time.time() - t0:.0f} s; {len(reports)} sanitizer report file(s)")
    for r in reports:
        with open(r, errors="replace") as f:
            print(f"===== {r}\n{f.read()[-6000:]}", file=sys.stderr)
    return 1 if rc or reports else 0


def main(argv):
    no_build = "--no-build" in argv
    argv = [a for a in argv if a != "--no-build"]
    if not no_build:
        build()
    overlay()
    return run_tests(argv or ["tests", "-q", "-x"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
