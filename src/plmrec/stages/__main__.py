"""`python -m plmrec.stages`: print dvc.yaml as the stages declare it."""

from plmrec.stages import dvc_yaml

print(dvc_yaml(), end="")
