"""`make sanitize`: build the CPU extension with AddressSanitizer + UBSan and run the tests under it.

The sanitized fastops._C is built out of place (build/sanitize/lib, objects in build/sanitize/temp), so the
normal in-place fastops/_C*.so is left alone. The tests import it through an overlay package,
build/sanitize/site/fastops/, whose entries are symlinks to the source package's files except _C, which is the
sanitized build; build/sanitize/site goes first on PYTHONPATH (subprocesses of the tests inherit it).

The Python interpreter is not instrumented, so the ASan runtime is LD_PRELOADed. Any report fails the run:
UBSan is built with -fno-sanitize-recover (abort at the first report), ASan aborts at its first report too, and
ASan's reports are also written to build/sanitize/reports/ (log_path), which must stay empty: a report in a
subprocess whose test did not notice the crash still fails `make sanitize`. UBSan ignores log_path next to the
ASan runtime (gcc 12), so pytest's output is scanned for reports as well. Signed overflow is checked although
Python's compile flags carry -fwrapv (which defines it as wrapping): setup.py adds -fno-wrapv to this build.

Usage: python tools/sanitize.py [--no-build] [pytest args...]   (default pytest args: tests -q -x)
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "sanitize")
LIB, TEMP, SITE, REPORTS = (os.path.join(OUT, d) for d in ("lib", "temp", "site", "reports"))

# One summary per distinct pytest selection (build/sanitize/summary-<hash>.md), all rendered into
# docs/reliability.md by tools/reliability_counts.py; the latest run of a selection replaces its file.
SUMMARY = os.path.join(OUT, "summary-{}.md")
_PROBE = """
import sys
sys.path.insert(0, {tests!r})
from isolated import run_isolated
proc = run_isolated("import fastops._C as c; print(c.__file__)\\n"
                    "maps = open('/proc/self/maps').read(); assert 'libasan' in maps and 'libubsan' in maps")
sys.stdout.write(proc.stdout); sys.stderr.write(proc.stderr); sys.exit(proc.returncode)
"""


_REPORT = re.compile(r"runtime error: |ERROR: AddressSanitizer|ERROR: LeakSanitizer")


def _runtime(name):
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        sys.exit(f"sanitize: {name} not found (gcc -print-file-name); install gcc's sanitizer runtimes")
    return os.path.realpath(path)


def build():
    env = dict(os.environ, FASTOPS_SANITIZE="1", FASTOPS_CUDA="0")
    env.setdefault("MAX_JOBS", "2")
    env["PATH"] = os.path.join(ROOT, ".venv", "bin") + os.pathsep + env.get("PATH", "")
    t0 = time.time()
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", TEMP, "--build-lib", LIB],
                   cwd=ROOT, env=env, check=True)
    print(f"sanitize: built in {time.time() - t0:.0f} s")
    return time.time() - t0


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
    # The sanitized build has the baseline CPU copy only (no per-ISA dispatch), so torch runs its baseline kernels
    # too: tests that compare bit for bit with torch (roi_heatmaps_to_keypoints against ATen's bicubic, whose
    # AVX2 kernels fuse multiply-adds the baseline ones do not) then compare like with like.
    env.setdefault("ATEN_CPU_CAPABILITY", "default")
    # tools/reliability_counts.py records the cases and hypothesis examples of this run (docs/reliability.md)
    env["PYTHONPATH"] += os.pathsep + os.path.join(ROOT, "tools")
    env.setdefault("FASTOPS_RELIABILITY_JSON", os.path.join(ROOT, "build", "reliability.json"))
    # The tests' fresh interpreters (tests/isolated.py) inherit all of the above.
    # Run from the overlay: `python -c` / `python -m` put the working directory first on sys.path, and from the
    # source root that would be the in-place package.
    # The probe runs through tests/isolated.py, as the isolated bad-input cases do: their fresh interpreters must
    # load the sanitized _C with the ASan runtime mapped.
    probe = subprocess.run([sys.executable, "-c", _PROBE.format(tests=os.path.join(ROOT, "tests"))], cwd=SITE,
                           env=env, capture_output=True, text=True)
    if probe.returncode or not probe.stdout.strip().startswith(SITE):
        sys.exit(f"sanitize: the overlay is not what gets imported:\n{probe.stdout}\n{probe.stderr}")
    print(f"sanitize: fastops._C = {probe.stdout.strip()}")
    args = [os.path.join(ROOT, a) if not a.startswith("-") and os.path.exists(os.path.join(ROOT, a.split("::")[0]))
            else a for a in pytest_args]
    t0 = time.time()
    # UBSan's reports do not follow log_path when the ASan runtime is loaded too (gcc 12: they go to stderr), so
    # the output is also scanned: a report in pytest's own process, or in a fresh interpreter of a failed
    # isolated test (whose stderr the failure message shows), counts as well. --capture=sys: pytest's default fd
    # capture would keep the report of an aborting test in a temporary file that is never printed.
    if not any(a.startswith("--capture") or a == "-s" for a in args):
        args = ["--capture=sys", *args]
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "reliability_counts",
                             "--rootdir", ROOT, *args], cwd=SITE, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    printed = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if _REPORT.search(line):
            printed.append(line.strip())
    rc = proc.wait()
    seconds = time.time() - t0
    reports = sorted(glob.glob(os.path.join(REPORTS, "*")))
    print(f"sanitize: pytest exit {rc} in {seconds:.0f} s; {len(reports)} sanitizer report file(s), "
          f"{len(printed)} report line(s) in the output")
    firsts = [f"output: {ln}" for ln in dict.fromkeys(printed)]
    for r in reports:
        with open(r, errors="replace") as f:
            text = f.read()
        print(f"===== {r}\n{text[-6000:]}", file=sys.stderr)
        first = next((ln for ln in text.splitlines() if "ERROR: AddressSanitizer" in ln or "runtime error" in ln),
                     text.strip().splitlines()[0] if text.strip() else "(empty)")
        firsts.append(f"{os.path.basename(r)}: {first.strip()}")
    return rc, seconds, firsts


def _summary(pytest_args, build_s, test_s, rc, firsts):
    lines = ["", f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `tools/sanitize.py "
             f"{' '.join(pytest_args)}` (ASan + UBSan, -fno-sanitize-recover; ASAN_OPTIONS halt_on_error=1, "
             "detect_leaks=0; isolated cases run the sanitized build too).",
             f"- build: {'skipped (--no-build)' if build_s is None else f'{build_s:.0f} s'}; tests: {test_s:.0f} s; "
             f"pytest exit status {rc}",
             f"- sanitizer reports: {len(firsts)}"] + [f"  - {f}" for f in firsts]
    os.makedirs(OUT, exist_ok=True)
    import hashlib

    with open(SUMMARY.format(hashlib.sha1(" ".join(pytest_args).encode()).hexdigest()[:10]), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
    no_build = "--no-build" in argv
    argv = [a for a in argv if a != "--no-build"] or ["tests", "-q", "-x"]
    build_s = None if no_build else build()
    overlay()
    rc, test_s, firsts = run_tests(argv)
    _summary(argv, build_s, test_s, rc, firsts)
    return 1 if rc or firsts else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
