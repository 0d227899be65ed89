# mtkd: two commands on a fresh machine, `make demo` and `make test`; each builds .venv first if missing.
PY      := .venv/bin/python
KERNEL  := .venv/share/jupyter/kernels/mtkd/kernel.json
PRESET  ?= demo

.PHONY: demo test lab test-lab git-filter grid kd-seeds paper bench profile readme study clean-venv

.venv/ready: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(KERNEL): .venv/ready | git-filter
	$(PY) -m ipykernel install --sys-prefix --name mtkd --display-name "mtkd (.venv)"

# Committed notebooks stay free of outputs and widget state however they are used: git sees every notebook through
# nbstripout (.gitattributes names the filter; mtkd_utils/tools/lab.py writes it into this clone's git config).
git-filter: .venv/ready    ## set-up: the nbstripout git filter (a no-op outside a git clone)
	if git rev-parse --git-dir >/dev/null 2>&1; then $(PY) -m mtkd_utils.lab --install-git-filter; fi

demo: $(KERNEL)            ## the whole workbook on the synthetic default, one Dask worker per core (ARGS="--scheduler sync": one by one)
	$(PY) -m mtkd_utils.batch --preset demo $(ARGS)

test: $(KERNEL)            ## unit tests + the notebooks end to end on the smoke preset, on both cores (pytest-xdist)
	$(PY) -m pytest -n 2 --dist loadfile

lab: $(KERNEL)             ## JupyterLab at the repository root, on 127.0.0.1 with a token, offering the mtkd kernel
	$(PY) -m mtkd_utils.lab $(LAB_ARGS)

test-lab: $(KERNEL)        ## JupyterLab in a real browser (chromium + selenium): runs 01 on the smoke preset, saves
	MTKD_TEST_LAB=1 $(PY) -m pytest tests/test_lab.py -v -rs

grid: $(KERNEL)            ## any preset's grid: make grid PRESET=paper, or ARGS="--seeds 0 1 2 --p 15 70 --workers 2"
	$(PY) -m mtkd_utils.batch --preset $(PRESET) $(ARGS)

# The headline's draws (issue 32): the KD comparison at the KD fraction over >= 5 seeds, M1, M2, M3, M1b and M1L (M1 at
# its validation plateau), then the results pages with seed-level intervals. Hours on 2 cores; resumes where it stopped.
KD_SEEDS ?= 0 1 2 3 4
kd-seeds: $(KERNEL)        ## the KD comparison at p = 5 over KD_SEEDS (default 0-4), then make readme
	$(PY) -m mtkd_utils.batch --preset demo --seeds $(KD_SEEDS) --p 5 --models M1 M2 M3 M1b M1L $(ARGS)
	$(MAKE) readme

paper: $(KERNEL)           ## the paper's full grid (ResNet-50, 224 px, 3 seeds): one worker per visible GPU; a cluster: docs/GRIDS.md
	$(PY) -m mtkd_utils.batch --preset paper $(ARGS)

bench: .venv/ready         ## training-speed benchmark (prints figures; run on purpose)
	$(PY) -m mtkd_utils.bench

profile: .venv/ready        ## where outputs/$(PRESET)'s time went, per run kind and phase (after make demo)
	$(PY) -m mtkd_utils.tools.profile outputs/$(PRESET)

readme: .venv/ready         ## rewrite docs/RESULTS.md and the README's results summary from outputs/demo
	$(PY) -m mtkd_utils.readme outputs/demo

study: $(KERNEL)           ## notebook 07, when KD pays, on outputs/demo (trains what it lacks; long, see docs/METHOD.md)
	mkdir -p outputs/demo/runs/study
	.venv/bin/papermill notebooks/07_when_kd_pays.ipynb outputs/demo/runs/study/07_when_kd_pays.ipynb -k mtkd \
		-p experiment_dir outputs/demo -p preset demo $(ARGS)

clean-venv:
	rm -rf .venv
