# Two commands a newcomer needs:  `make demo` (the main job: the bundled default model on sample
# images of several modalities)  and  `make test`.  `make pipeline` shows the data and training
# pipeline on the bundled nnU-Net sample (convert, split, describe, build, synth, train tiny, segment).
# Both create .venv and install everything on first use. TORCH_SPEC pins the CPU build of torch
# that lies on this project's machines; elsewhere use e.g. `make demo TORCH_SPEC='torch>=2.6'`.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out
SAMPLE := rcmed/samples/Dataset001_AbdomenPhantom
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo pipeline test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" numpy
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(VENV)/bin/rcmed weights --language
	touch $@

demo: install
	$(VENV)/bin/rcmed demo --out $(DEMO_OUT)/demo

pipeline: install
	rm -rf $(addprefix $(DEMO_OUT)/,store describe train phantoms tiny segment)  # keeps demo_out/demo
	$(VENV)/bin/rcmed info $(SAMPLE)/imagesTr/phantom_000_0000.nii.gz --modality ct
	$(VENV)/bin/rcmed data convert $(SAMPLE) --format nnunet --out $(DEMO_OUT)/store
	$(VENV)/bin/rcmed data split $(DEMO_OUT)/store --train 0.34 --val 0.33 --test 0.33
	$(VENV)/bin/rcmed data stats $(DEMO_OUT)/store
	$(VENV)/bin/rcmed data describe $(SAMPLE)/imagesTr/phantom_000_0000.nii.gz --labels $(SAMPLE)/labelsTr/phantom_000.nii.gz \
		--name liver --name "liver lesion" --slice 8 --modality ct --out $(DEMO_OUT)/describe
	$(VENV)/bin/rcmed data build $(DEMO_OUT)/store --out $(DEMO_OUT)/train --workers 2
	$(VENV)/bin/rcmed data synth --modality all --n 20 --out $(DEMO_OUT)/phantoms
	$(VENV)/bin/rcmed data stats $(DEMO_OUT)/phantoms
	$(VENV)/bin/rcmed train --config configs/train/tiny.json
	$(VENV)/bin/rcmed segment $(SAMPLE)/imagesTr/phantom_001_0000.nii.gz "Segment the liver." \
		--model $(DEMO_OUT)/tiny/model --modality ct --out $(DEMO_OUT)/segment

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check rcmed tests bench scripts

clean:
	rm -rf $(VENV) $(DEMO_OUT)
