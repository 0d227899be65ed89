# mtkd: two commands on a fresh machine, `make demo` and `make test`; each builds .venv first if missing.
PY      := .venv/bin/python
KERNEL  := .venv/share/jupyter/kernels/mtkd/kernel.json
PRESET  ?= demo

.PHONY: demo test lab grid paper bench readme study clean-venv

.venv/ready: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(KERNEL): .venv/ready
	$(PY) -m ipykernel install --sys-prefix --name mtkd --display-name "mtkd (.venv)"

demo: $(KERNEL)            ## the whole workbook on the synthetic default, one Dask worker per core (ARGS="--scheduler sync": one by one)
	$(PY) -m mtkd_utils.batch --preset demo $(ARGS)

test: $(KERNEL)            ## unit tests + the notebooks end to end on the smoke preset
	$(PY) -m pytest

lab: $(KERNEL)             ## JupyterLab with the workbook's kernel
	.venv/bin/jupyter lab notebooks/

grid: $(KERNEL)            ## any preset's grid: make grid PRESET=paper, or ARGS="--seeds 0 1 2 --p 15 70 --workers 2"
	$(PY) -m mtkd_utils.batch --preset $(PRESET) $(ARGS)

paper: $(KERNEL)           ## the paper's full grid (ResNet-50, 224 px, 3 seeds): one worker per visible GPU; a cluster: README
	$(PY) -m mtkd_utils.batch --preset paper $(ARGS)

bench: .venv/ready         ## training-speed benchmark (prints figures; run on purpose)
	$(PY) -m mtkd_utils.bench

readme: .venv/ready         ## rewrite the README's results section from outputs/demo (after make demo)
	$(PY) -m mtkd_utils.readme outputs/demo

study: $(KERNEL)           ## notebook 07, when KD pays, on outputs/demo (trains what it lacks; long, see README)
	mkdir -p outputs/demo/runs/study
	.venv/bin/papermill notebooks/07_when_kd_pays.ipynb outputs/demo/runs/study/07_when_kd_pays.ipynb -k mtkd \
		-p experiment_dir outputs/demo -p preset demo $(ARGS)

clean-venv:
	rm -rf .venv
