# moert — build, test, GPU builds.
#
#   make            build ./moert (installs missing Debian packages first: tools/deps.sh)
#   make run        build and run the embedded default model (README's first command)
#   make test       build and run the CUnit suite, then the same suite under ASan + UBSan,
#                   then compile the HIP backend with hipcc (no GPU needed)
#   make test-fast  the suite without the sanitizer pass
#   make hip        build ./moert-hip: the HIP backend with hipcc for AMD ($(GPU_TARGETS))
#   make hip-nvidia build ./moert-nvidia and build/nvidia/test_runner: the HIP backend on
#                   CUDA via hip/hip_compat.h (sm_90), support libraries linked statically
#   make fuzz       build the libFuzzer harnesses (tests/fuzz/, clang + ASan + UBSan) and run
#                   each for FUZZ_SECONDS (default 30); crashes go to build/fuzz/artifacts/
#   make fuzz-ci    replay every seed corpus, then fuzz each target FUZZ_CI_SECONDS (part of
#                   `make test`)
#
# All objects go under build/<variant>/; nothing is written elsewhere except ./moert*.

CC       := gcc
V        ?= release
BUILD    := build/$(V)
DEPS_STAMP := build/.deps-ok

WARN     := -Wall -Wextra -Werror -Wno-format-truncation -Wshadow -Wstrict-prototypes -Wmissing-prototypes
# -ffp-contract=off: the compiler must never fuse a*b+c on its own; kernels choose FMA
# explicitly so that every path (scalar, AVX2, any thread count) rounds identically.
BASEFLAGS := -std=c11 -D_GNU_SOURCE -fopenmp -ffp-contract=off $(WARN) -MMD -MP
ifeq ($(V),asan)
  OPT := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else
  OPT := -O2 -g
endif
CFLAGS   += $(BASEFLAGS) $(OPT)
LDFLAGS  += -fopenmp $(filter -fsanitize=%,$(OPT))
# Static where the GPU test machine lacks the library (see README "Carrying the binary").
STATIC_LIBS := -Wl,-Bstatic -lyaml -lutf8proc -ljansson -lpcre2-8 -lxxhash -Wl,-Bdynamic
LDLIBS   += $(STATIC_LIBS) -lm -lpthread

# hip/hip_scratch.c: the HIP backend's scratch requests, which every build's planner asks for.
LIB_SRC  := $(wildcard runtime/*.c runtime/*/*.c arena/*.c ops/*.c) hip/hip_scratch.c
LIB_SRC  := $(filter-out runtime/cli/main.c,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/contract_default.o
# The allocation counter interposes malloc; it cannot share a process with ASan.
TEST_SRC := $(wildcard tests/*.c)
ifeq ($(V),asan)
  TEST_SRC := $(filter-out tests/alloc_count.c tests/test_alloc.c,$(TEST_SRC))
endif
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
SUITES   := $(patsubst tests/test_%.c,%,$(filter tests/test_%.c,$(filter-out tests/test_main.c,$(TEST_SRC))))

.PHONY: all run test test-fast test-release test-asan test-objs deps hip hip-nvidia clean bench-cpu comm-nccl \
        fuzz fuzz-build fuzz-ci
all: moert

$(DEPS_STAMP): tools/deps.sh
	@mkdir -p build
	sh tools/deps.sh
	@touch $@

deps:
	sh tools/deps.sh && mkdir -p build && touch $(DEPS_STAMP)

$(BUILD)/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The default trace contract is compiled in, so a bare model directory can be traced.
build/%/gen/contract_default.c: contracts/qwen3moe-trace-v1.yaml
	@mkdir -p $(dir $@)
	@{ printf 'extern const char ctr_default_yaml[];\nconst char ctr_default_yaml[] =\n'; \
	   sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; printf ';\n'; } > $@.tmp && mv $@.tmp $@

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(CC) $(CFLAGS) -c $< -o $@

# The git commit for `moert --version` and the manifests (runtime/version.c): rewritten only
# when it changes, so a rebuild follows a commit and nothing else.
.PHONY: FORCE
$(BUILD)/gen/commit.h: FORCE
	@mkdir -p $(dir $@)
	@if c=$$(git rev-parse --short=12 HEAD 2>/dev/null); then \
	   git diff --quiet HEAD -- 2>/dev/null || c="$$c-dirty"; else c=unknown; fi; \
	 printf '#define MOERT_GIT_COMMIT "%s"\n' "$$c" > $@.tmp; \
	 if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
$(BUILD)/runtime/version.o: $(BUILD)/gen/commit.h
$(BUILD)/runtime/version.o: CFLAGS += -I$(BUILD)/gen

$(BUILD)/libmoert.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

moert: $(BUILD)/runtime/cli/main.o $(BUILD)/libmoert.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ---- tests -------------------------------------------------------------------------
$(BUILD)/tests/suites.inc: $(TEST_SRC) Makefile
	@mkdir -p $(dir $@)
	@printf '%s\n' $(foreach s,$(SUITES),"SUITE($(s))") > $@.tmp && mv $@.tmp $@

$(BUILD)/tests/test_main.o: tests/test_main.c $(BUILD)/tests/suites.inc | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -I$(BUILD)/tests -c $< -o $@

$(BUILD)/tests/%.o: tests/%.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Wno-missing-prototypes -c $< -o $@

# The suite's objects alone (hip/hip.mk links them into the GPU test runner).
test-objs: $(TEST_OBJ)

$(BUILD)/test_runner: $(TEST_OBJ) $(BUILD)/libmoert.a
	$(CC) $(LDFLAGS) -o $@ $^ -Wl,-Bstatic -lcunit -Wl,-Bdynamic $(LDLIBS)

# The suite runs ./moert for CLI tests, so it depends on the release binary too.
test-release: moert
	$(MAKE) V=release build/release/test_runner
	build/release/test_runner

test-asan: moert
	$(MAKE) V=asan build/asan/test_runner
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  MOERT_TEST_SANITIZED=1 build/asan/test_runner

test-fast: test-release

# The NCCL transport of runtime/comm.c (compile-guarded by MOERT_NCCL) is compiled wherever
# the CUDA toolkit ships nccl.h; running it needs GPUs.
CUDA_HOME   ?= /usr/local/cuda
NCCL_HEADER := $(wildcard $(CUDA_HOME)/include/nccl.h)

# The HIP backend is compiled (hipcc, AMD target) on every test run: CI has no GPU, but
# the kernels must keep building.
test: test-release test-asan hip fuzz-ci $(if $(NCCL_HEADER),comm-nccl)

comm-nccl:
	@mkdir -p build/nccl
	$(CC) $(CFLAGS) -DMOERT_NCCL -isystem $(CUDA_HOME)/include -c runtime/comm.c -o build/nccl/comm.o

run: moert
	./moert run configs/qwen3moe.yaml --prompt "Hello" -n 16

bench-cpu: moert
	./moert bench configs/bench-cpu.yaml

# ---- GPU ---------------------------------------------------------------------------
GPU_TARGETS ?= gfx90a
HIPCC       ?= hipcc

hip: | $(DEPS_STAMP)
	$(MAKE) -f hip/hip.mk HIPCC=$(HIPCC) GPU_TARGETS="$(GPU_TARGETS)" hip

hip-nvidia: | $(DEPS_STAMP)
	$(MAKE) -f hip/hip.mk NV_ARCH="$(or $(NV_ARCH),sm_90)" hip-nvidia

# ---- fuzzing ----------------------------------------------------------------------
# One harness per parser or file a user can hand moert: tests/fuzz/fuzz_<target>.c, seeded
# from tests/fuzz/corpus/<target>/ (tests/fuzz/make-corpus.sh rebuilds the seeds).  To add
# a target (gguf, once runtime/gguf.c lands): write tests/fuzz/fuzz_gguf.c and
# tests/fuzz/corpus/gguf/, and add `gguf` to FUZZ_TARGETS.
FUZZ_TARGETS := st st_index config contract hf_config tok_json tok_encode tok_ids \
                trace_validate trace_diff replay_manifest cli_args gguf
FUZZ_SECONDS ?= 30
FUZZ_CI_SECONDS ?= 3
FUZZ_CC  ?= clang
FUZZ_DIR := build/fuzz
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all
# clang knows no -Wformat-truncation, and reports OpenMP simd loops it did not vectorize.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -fopenmp -ffp-contract=off $(filter-out -Wno-format-truncation,$(WARN)) \
               -Wno-pass-failed -O1 -g -fno-omit-frame-pointer $(FUZZ_SAN) -fsanitize=fuzzer-no-link -MMD -MP
FUZZ_LIB_SRC := $(filter-out ops/%,$(LIB_SRC))
# The kernels parse nothing; clang 14 lacks a cpu feature name they test: gcc builds them.
FUZZ_OPS_OBJ := $(patsubst %.c,$(FUZZ_DIR)/%.o,$(filter ops/%,$(LIB_SRC)))
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(FUZZ_DIR)/%.o) $(FUZZ_OPS_OBJ) $(FUZZ_DIR)/gen/contract_default.o
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
FUZZ_RUN = ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
FUZZ_FLAGS := -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1

$(FUZZ_DIR)/ops/%.o: ops/%.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -O2 -g -c $< -o $@

$(FUZZ_DIR)/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_DIR)/gen/%.o: $(FUZZ_DIR)/gen/%.c
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_DIR)/libmoert.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/tests/fuzz/fuzz_%.o $(FUZZ_DIR)/tests/fuzz/fuzz_util.o $(FUZZ_DIR)/libmoert.a
	$(FUZZ_CC) -fopenmp $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

fuzz-build: $(FUZZ_BINS)

# Each target: the seeds (read-only, in the repo) and a work corpus under build/fuzz.
fuzz: moert fuzz-build
	@mkdir -p $(FUZZ_DIR)/artifacts $(FUZZ_DIR)/logs
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t; \
	  $(FUZZ_RUN) $(FUZZ_DIR)/fuzz_$$t $(FUZZ_FLAGS) -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- $(FUZZ_DIR)/corpus/$$t tests/fuzz/corpus/$$t \
	    > $(FUZZ_DIR)/logs/$$t.log 2>&1 || { fail=1; echo "fuzz $$t: FAILED (see $(FUZZ_DIR)/logs/$$t.log)"; }; \
	  printf 'fuzz %-16s %s\n' $$t "$$(tools/fuzz-summary.sh $(FUZZ_DIR)/logs/$$t.log)"; \
	done; exit $$fail

# CI: every seed must run clean, then a short fixed-seed fuzz of each target.
fuzz-ci: moert fuzz-build
	@mkdir -p $(FUZZ_DIR)/artifacts $(FUZZ_DIR)/logs
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  rm -rf $(FUZZ_DIR)/ci/$$t; mkdir -p $(FUZZ_DIR)/ci/$$t; \
	  $(FUZZ_RUN) $(FUZZ_DIR)/fuzz_$$t $(FUZZ_FLAGS) -runs=0 tests/fuzz/corpus/$$t \
	    > $(FUZZ_DIR)/logs/$$t.replay.log 2>&1 || { fail=1; echo "fuzz-ci $$t: a seed FAILED (see $(FUZZ_DIR)/logs/$$t.replay.log)"; }; \
	  $(FUZZ_RUN) $(FUZZ_DIR)/fuzz_$$t $(FUZZ_FLAGS) -seed=1 -max_total_time=$(FUZZ_CI_SECONDS) \
	    -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- $(FUZZ_DIR)/ci/$$t tests/fuzz/corpus/$$t \
	    > $(FUZZ_DIR)/logs/$$t.ci.log 2>&1 || { fail=1; echo "fuzz-ci $$t: FAILED (see $(FUZZ_DIR)/logs/$$t.ci.log)"; }; \
	  printf 'fuzz-ci %-16s %s\n' $$t "$$(tools/fuzz-summary.sh $(FUZZ_DIR)/logs/$$t.ci.log)"; \
	done; exit $$fail

clean:
	rm -rf build/release build/asan build/hip build/nvidia build/fuzz moert moert-hip moert-nvidia

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BUILD)/runtime/cli/main.d
-include $(wildcard $(FUZZ_DIR)/*/*.d $(FUZZ_DIR)/*/*/*.d)
