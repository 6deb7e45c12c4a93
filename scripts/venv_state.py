"""What `make` should do with .venv, run by the interpreter make would use:
`PYTHON scripts/venv_state.py NAME VENV HINT`.

Prints one word, "keep", "create" or "rebuild <interpreter that built it>", or
else the one-line reason this interpreter cannot be used. Written so that
Python 2 and old Python 3 can run it (no f-strings): an ancient interpreter must
reach the version message, not a SyntaxError.
"""

import os
import sys

MINIMUM = (3, 11)  # keras, numpy, scikit-learn and kaggle at the pinned versions


def main():
    name, venv, hint = sys.argv[1:4]
    v = sys.version_info
    found = "%s (Python %d.%d.%d at %s)" % (name, v[0], v[1], v[2], sys.executable)
    if v < MINIMUM:
        return "make needs Python >= %d.%d; found %s. %s" % (MINIMUM + (found, hint))
    real = os.path.realpath
    if real(sys.prefix) == real(venv):  # PYTHON is the venv's own python
        return "keep"
    built_by = ""
    try:
        for line in open(os.path.join(venv, "pyvenv.cfg")):
            key, _, value = line.partition("=")
            if key.strip() == "executable":
                built_by = value.strip()
    except (IOError, OSError):
        pass
    base = getattr(sys, "_base_executable", sys.executable)
    if os.path.exists(os.path.join(venv, "bin", "python")) and built_by and (
            real(built_by) == real(base)):
        return "keep"
    from importlib.util import find_spec

    if not (find_spec("venv") and find_spec("ensurepip")):
        return ("%s cannot create a venv: no ensurepip/venv module. Install it "
                "(Debian/Ubuntu: apt install python%d.%d-venv)" % (found, v[0], v[1]))
    if os.path.exists(venv):
        return "rebuild " + (built_by or "an unknown Python")
    return "create"


print(main())
