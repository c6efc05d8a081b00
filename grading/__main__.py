"""`python -m grading COMMAND`: build the student release and the autograder, grade a submission, verify the tests.

`grade` runs grading/runtime/ (shipped to students and to Gradescope); the other commands are build side
(grading/build/) and checks (grading/checks/), absent from a shipped copy.
"""

import argparse
import importlib
import sys

# command -> (module, help). Only `grade` ships with the student release and the autograder bundle.
COMMANDS = {
    "grade": ("grading.runtime.grade", "grade a submission and write Gradescope's results.json"),
    "grade-class": (
        "grading.classroom.batch",
        "grade a whole class: gradebook.csv, results per student, report.html, similarity (resumable)",
    ),
    "build-student": ("grading.build.release", "build the student release into dist/student/ and dist/student.zip"),
    "build-autograder": ("grading.build.autograder", "build the Gradescope bundle dist/autograder.zip"),
    "verify": ("grading.checks.verify", "prove the tests: reference 100%, stubs 0, each part alone, the bug catalogue"),
    "clauses": (
        "grading.checks.clauses",
        "the clause-to-test map: every promise of a graded docstring and the tests pinning it",
    ),
    "mutants": (
        "grading.checks.mutants",
        "mutation testing of the solution regions (cosmic-ray): survivors and score per part",
    ),
}


def _help(command):
    """The one-line help of `command`, with `%` escaped (argparse formats help strings: "100%," would break it)."""
    return COMMANDS[command][1].replace("%", "%%")


def _parser():
    parser = argparse.ArgumentParser(prog="python -m grading", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("grade", help=_help("grade"))
    p.add_argument("submission", help="the submission folder (Gradescope: /autograder/submission)")
    p.add_argument("--out", default="results.json", help="where to write results.json (default: %(default)s)")
    p.add_argument("--bundle", help="folder holding tests/, assignment/ and grading/ (default: this package's parent)")
    p.add_argument("--manifest", help="manifest.json listing the graded tests (default: the bundle's)")
    p.add_argument("--only", action="append", metavar="MODULE", help="grade only this part (repeatable)")
    p.add_argument("--visible-only", action="store_true", help="leave the hidden tests out")
    p.add_argument("--cpu", type=int, help="pin the tests to this CPU (taskset)")
    p.add_argument("--maxfail", type=int, help="stop after this many failed tests")
    p.add_argument("--total-timeout", type=float, help="seconds for the whole run (default: the manifest's)")
    p.add_argument(
        "--no-drop-privileges",
        action="store_true",
        help="run the student's code as the current user, even root (trusted code only: the reference, the bugs)",
    )
    p.add_argument("--runner-user", help="the unprivileged user the student's code runs as (default: student)")
    p.add_argument("--runner-python", help="an interpreter the runner user can run (default: this one)")
    p.add_argument(
        "--sandbox-optional",
        action="store_true",
        help="as root without a runner user, run the student's code unsandboxed instead of refusing (your own "
        "machine; never the autograder)",
    )
    p.add_argument(
        "--no-cgroup",
        action="store_true",
        help="limit the student's code with rlimits only, even where a cgroup per runner could be made",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work directory")
    p.add_argument("--quiet", action="store_true", help="print nothing; only write results.json")

    p = sub.add_parser("grade-class", help=_help("grade-class"))
    p.add_argument(
        "submissions",
        help="a folder with one entry per student (a folder or a .zip), or a Gradescope export (.zip or its folder)",
    )
    p.add_argument("--out", required=True, help="the output folder (outside SUBMISSIONS)")
    p.add_argument("--workers", type=int, help="students graded at once (default: what the CPUs and memory allow)")
    p.add_argument(
        "--runner-user",
        action="append",
        metavar="U",
        help="the unprivileged user the student's code runs as (default: student); as root, each worker needs one "
        "of its own (repeat the option or give U1,U2): without a cgroup, the process limit counts per user",
    )
    p.add_argument("--runner-python", help="an interpreter the runner user can run (default: this one)")
    p.add_argument("--regrade", action="store_true", help="grade again the students that already have results")
    p.add_argument("--shard", metavar="I/N", help="grade only shard I of N (1-based); merge: run again without it")
    p.add_argument("--bundle", help="folder holding tests/, assignment/ and grading/ (default: this package's parent)")
    p.add_argument("--manifest", help="manifest.json listing the graded tests (default: the bundle's, or collected)")
    p.add_argument(
        "--no-drop-privileges",
        action="store_true",
        help="run the students' code as the current user, even root (trusted code only: the reference, the bugs)",
    )
    p.add_argument("--no-similarity", action="store_true", help="skip the similarity of every pair")

    p = sub.add_parser("build-student", help=_help("build-student"))
    p.add_argument("--root", default=".", help="the repository (default: the current folder)")
    p.add_argument("--out", default="dist/student", help="release folder (default: %(default)s)")
    p.add_argument("--no-zip", action="store_true", help="do not write the .zip next to the folder")
    p.add_argument("--no-import-check", action="store_true", help="skip importing the stub modules")

    p = sub.add_parser("build-autograder", help=_help("build-autograder"))
    p.add_argument("--root", default=".", help="the repository (default: the current folder)")
    p.add_argument("--out", default="dist/autograder", help="bundle folder; the zip goes next to it")
    p.add_argument("--no-import-check", action="store_true", help="skip importing the stub modules")

    p = sub.add_parser("verify", help=_help("verify"))
    p.add_argument("--root", default=".", help="the repository (default: the current folder)")
    p.add_argument("--only", action="append", metavar="MODULE", help="check only this part (repeatable)")
    p.add_argument("--bugs-only", action="store_true", help="only the patches: the bug catalogue and the alternatives")
    p.add_argument("--no-bugs", action="store_true", help="skip the patches: the bug catalogue and the alternatives")
    p.add_argument(
        "--bug", action="append", metavar="NAME", help="only this bug or alternative (module/name or name; repeatable)"
    )
    p.add_argument("--no-timing", action="store_true", help="skip the one-CPU timing run of the reference")
    p.add_argument("--no-attacks", action="store_true", help="skip the attack suite")
    p.add_argument("--runner-user", help="the attack suite's runner user (default: student)")
    p.add_argument("--runner-python", help="an interpreter the runner user can run (default: this one)")
    p.add_argument("--jobs", type=int, help="parallel runs (default: the number of CPUs)")
    p.add_argument(
        "--bugs-full", action="store_true", help="run every test on each bug (default: stop at the first failure)"
    )

    p = sub.add_parser("clauses", help=_help("clauses"))
    p.add_argument("--root", default=".", help="the repository (default: the current folder)")
    p.add_argument("--summary", action="store_true", help="print only the per-part counts and the problems")

    p = sub.add_parser("mutants", help=_help("mutants"))
    p.add_argument("--root", default=".", help="the repository (default: the current folder)")
    p.add_argument("--only", action="append", metavar="MODULE", help="only this part (repeatable)")
    p.add_argument("--jobs", type=int, help="parts run at once (default: the number of CPUs)")
    p.add_argument("--keep", metavar="DIR", help="keep the copies and cosmic-ray sessions in this new folder")
    p.add_argument(
        "--recheck",
        metavar="JSON",
        help="the --json of an earlier run: run only its survivors and mutants new since (the rest stay killed)",
    )
    p.add_argument(
        "--shards", type=int, default=1, metavar="N", help="split each part into N shards run at once (default: 1)"
    )
    p.add_argument("--json", metavar="FILE", help="also write every mutant and its outcome to this file")
    return parser


def _import(command, module_name):
    """The module of `command`, or None (said on stderr) when this copy of the grader does not have it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if module_name == exc.name or module_name.startswith(f"{exc.name}."):
            print(f"`{command}` is instructor tooling and is not part of this copy of the grader.", file=sys.stderr)
            return None
        raise


def _manifest_for(args, grade):
    """The manifest the `grade` command grades against: --manifest, else the bundle's grading/manifest.json, else
    one collected now against the bundle's own assignment/ (a repository: build side, never shipped)."""
    manifest = grade.shipped_manifest(args.manifest, args.bundle)
    if manifest is not None:
        return manifest
    from grading.build.manifest import collect_for_grading

    log = (lambda line: None) if args.quiet else print
    return collect_for_grading(args.bundle or grade.bundle_root(), log=log)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    module = _import(args.command, COMMANDS[args.command][0])
    if module is None:
        return 2
    if args.command == "grade":
        return module.main(args, lambda: _manifest_for(args, module))
    return module.main(args)


if __name__ == "__main__":
    sys.exit(main())
