"""What the command-line tests share: calling a module's `main` in-process and checking its exit code."""


def main(capsys, module, *args, expect=0):
    """Calls `module.main(args)` here; returns (stdout, stderr) after checking the exit code."""
    code = module.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == expect, f"main({args}) returned {code}, expected {expect}\n--- stdout\n{out}\n--- stderr\n{err}"
    return out, err
