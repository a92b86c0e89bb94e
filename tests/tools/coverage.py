#!/usr/bin/env python3
"""Line coverage per module from `cargo llvm-cov --lcov`, and the gate on KCO's
critical paths.

    coverage.py LCOV.info [--markdown OUT.md]

Test code is left out of the counts: inline unit-test modules (everything from
a `#[cfg(test)]` line followed by `mod ... {` to the end of the file, where this
project keeps them) and `src/**/tests.rs` files. Counting them would raise every
figure with lines that are executed by definition.

Prints a table of every source file under src/ (lines covered / lines, percent),
grouped by module, then the critical paths with their bar. Exits 1 when a critical
path is below its bar, naming it. The critical paths are the ones the project's
plan sets at 80% or more: polling, diffing, trigger evaluation, action dispatch and
fencing, admission validation and defaulting, leader election and sharding, tenancy
checks, the endpoint policy and subscriptions.
"""
import os
import sys

BAR = 80.0

# Critical path -> the files that implement it (paths relative to the repository).
CRITICAL = {
    "polling": ["src/monitor/poll.rs"],
    "diffing (observed state)": ["src/monitor/state.rs"],
    "trigger evaluation": [
        "src/triggers/mod.rs",
        "src/triggers/path.rs",
        "src/triggers/condition.rs",
        "src/triggers/firing.rs",
        "src/triggers/value.rs",
    ],
    "action dispatch and fencing": ["src/actions/dispatch.rs"],
    "admission validation": [
        "src/admission/validate.rs",
        "src/admission/query.rs",
        "src/admission/review.rs",
    ],
    "admission defaulting": ["src/admission/defaults.rs"],
    "leader election": ["src/election.rs"],
    "sharding": ["src/shard.rs"],
    "tenancy checks": ["src/tenancy/quota.rs", "src/tenancy/tenants.rs"],
    "endpoint policy": [
        "src/tenancy/endpoint.rs",
        "src/tenancy/egress.rs",
        "src/tenancy/address.rs",
        "src/tenancy/services.rs",
    ],
    "object names and who may lend an account": ["src/names.rs", "src/admission/access.rs"],
    "subscriptions": [
        "src/subscriptions/protocol.rs",
        "src/subscriptions/connection.rs",
        "src/monitor/listen.rs",
    ],
}


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = os.getcwd().rstrip("/") + "/"
    hits = {}
    current = None
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if line.startswith("SF:"):
                name = line[3:]
                if name.startswith(root):
                    name = name[len(root):]
                current = hits.setdefault(name, {}) if name.startswith("src/") else None
            elif line.startswith("DA:") and current is not None:
                number, count = line[3:].split(",")[:2]
                number = int(number)
                current[number] = max(current.get(number, 0), int(float(count)))
            elif line == "end_of_record":
                current = None
    files = {}
    for name, lines in hits.items():
        if name.endswith("/tests.rs"):
            continue
        first_test = None
        try:
            with open(name) as source:
                text = source.read().splitlines()
            for i, line in enumerate(text):
                # `#[cfg(test)]` then an inline `mod ... {` (not `mod tests;`, whose
                # file is left out as a whole).
                after = text[i + 1].strip() if i + 1 < len(text) else ""
                if line.startswith("#[cfg(test)]") and after.startswith("mod ") and after.endswith("{"):
                    first_test = i + 1
                    break
        except OSError:
            pass
        counted = {n: c for n, c in lines.items() if first_test is None or n < first_test}
        files[name] = (sum(1 for c in counted.values() if c > 0), len(counted))

    def pct(covered, count):
        return 100.0 * covered / count if count else 100.0

    out = []
    out.append("| Module / file | Lines covered | Lines | Coverage |")
    out.append("|---|---:|---:|---:|")
    modules = {}
    for name in sorted(files):
        parts = name[len("src/"):].split("/")
        module = parts[0].removesuffix(".rs")
        modules.setdefault(module, []).append(name)
    for module, names in sorted(modules.items()):
        covered = sum(files[n][0] for n in names)
        count = sum(files[n][1] for n in names)
        out.append(f"| **{module}** | {covered} | {count} | **{pct(covered, count):.1f}%** |")
        if len(names) > 1:
            for n in names:
                c, t = files[n]
                out.append(f"| &nbsp;&nbsp;{n} | {c} | {t} | {pct(c, t):.1f}% |")
    total_c = sum(c for c, _ in files.values())
    total_t = sum(t for _, t in files.values())
    out.append(f"| **all of src/** | {total_c} | {total_t} | **{pct(total_c, total_t):.1f}%** |")

    out.append("")
    out.append(f"Critical paths (bar: {BAR:.0f}% of lines):")
    out.append("")
    out.append("| Critical path | Files | Coverage | Bar |")
    out.append("|---|---|---:|---|")
    failures = []
    for path, names in CRITICAL.items():
        missing = [n for n in names if n not in files]
        if missing:
            failures.append(f"{path}: no coverage data for {', '.join(missing)}")
            continue
        covered = sum(files[n][0] for n in names)
        count = sum(files[n][1] for n in names)
        p = pct(covered, count)
        ok = p >= BAR
        if not ok:
            failures.append(f"{path}: {p:.1f}% of lines ({covered}/{count}) is below {BAR:.0f}%")
        listed = ", ".join(f"`{n}` {pct(*files[n]):.0f}%" for n in names)
        out.append(f"| {path} | {listed} | {p:.1f}% | {'met' if ok else '**below**'} |")

    text = "\n".join(out)
    print(text)
    if "--markdown" in sys.argv:
        target = sys.argv[sys.argv.index("--markdown") + 1]
        with open(target, "w") as f:
            f.write(text + "\n")
    if failures:
        print("\ncoverage gate failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print("\ncoverage gate passed: every critical path is at or above the bar")
    return 0


if __name__ == "__main__":
    sys.exit(main())
