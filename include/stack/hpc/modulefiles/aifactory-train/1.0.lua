-- The local cluster's training environment as an environment module (Lmod), the way a site ships
-- its software: stack.sh installs this tree into the site's module path and fills in @HPC_ROOT@.
-- Jobs load it through the cluster spec (include/clusters/local.yaml, environment.modules).
help([[AI Factory training environment: a Python with torch, pyarrow, onnx (requirements-train.txt)]])
whatis("Name: aifactory-train")
whatis("Version: 1.0")
whatis("Description: the factory's training Python for recipes (the platform job runtime's)")
local root = "@HPC_ROOT@/venv"
prepend_path("PATH", pathJoin(root, "bin"))
setenv("AIFP_TRAIN_ENV", root)
