# usage (cwd = /tmp/mypyc_exp/repo): MYPYC_MODS="a.py b.py" python ../setup_mypyc.py build_ext --inplace
import os
from setuptools import setup
from mypyc.build import mypycify
mods = os.environ["MYPYC_MODS"].split()
setup(name="hydra_mypyc_exp", packages=[],
      ext_modules=mypycify(["--ignore-missing-imports", "--follow-imports=silent", *mods],
                           opt_level=os.environ.get("MYPYC_OPT", "3"),
                           multi_file=False, separate=False, group_name="hydra_hot"))
