"""A script that runs a function of its own ``__main__`` with ``ferrovod.run``, as a user's
script or a notebook does: ``python main_fn.py ok`` prints every rank's result as JSON on its
last line; ``python main_fn.py global`` tries a function that uses a module-level import and
prints the refusal."""

import json
import sys

import ferrovod


def self_contained(base, scale=1):
    """Imports what it needs inside its body, so it can travel as source."""
    import numpy as np

    import ferrovod as fv

    fv.init()
    total = fv.allreduce(np.array([fv.rank() + base], dtype=np.float64), op=fv.Sum)
    return {"rank": fv.rank(), "total": float(total[0]) * scale}


def uses_module_global():
    """Uses ``json``, imported at the top of this script: not there on the ranks."""
    return json.dumps([1])


if __name__ == "__main__":
    if sys.argv[1] == "ok":
        print(json.dumps(ferrovod.run(self_contained, args=(10,), kwargs={"scale": 2}, np=2)))
    else:
        try:
            ferrovod.run(uses_module_global, np=2)
        except TypeError as e:
            print(f"TypeError: {e}")
