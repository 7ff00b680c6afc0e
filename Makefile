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

LIB_SRC  := $(wildcard runtime/*.c arena/*.c ops/*.c)
LIB_SRC  := $(filter-out runtime/main.c,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/contract_default.o
# The allocation counter interposes malloc; it cannot share a process with ASan.
TEST_SRC := $(wildcard tests/*.c)
ifeq ($(V),asan)
  TEST_SRC := $(filter-out tests/alloc_count.c tests/test_alloc.c,$(TEST_SRC))
endif
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
SUITES   := $(patsubst tests/test_%.c,%,$(filter tests/test_%.c,$(filter-out tests/test_main.c,$(TEST_SRC))))

.PHONY: all run test test-fast test-release test-asan test-objs deps hip hip-nvidia clean bench-cpu
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
$(BUILD)/gen/contract_default.c: contracts/qwen3moe-trace-v1.yaml
	@mkdir -p $(dir $@)
	@{ printf 'extern const char ctr_default_yaml[];\nconst char ctr_default_yaml[] =\n'; \
	   sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; printf ';\n'; } > $@.tmp && mv $@.tmp $@

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmoert.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

moert: $(BUILD)/runtime/main.o $(BUILD)/libmoert.a
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

# The HIP backend is compiled (hipcc, AMD target) on every test run: CI has no GPU, but
# the kernels must keep building.
test: test-release test-asan hip

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

clean:
	rm -rf build/release build/asan build/hip build/nvidia moert moert-hip moert-nvidia

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BUILD)/runtime/main.d
