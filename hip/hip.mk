# hip/hip.mk — the GPU builds, called by the top Makefile (`make hip`, `make hip-nvidia`).
#
#   make hip         hip/*.hip with hipcc --offload-arch=$(GPU_TARGETS) (default gfx90a)
#                    -> ./moert-hip (AMD; needs libamdhip64 where it runs)
#   make hip-nvidia  hip/*.hip with nvcc -x cu -arch=$(NV_ARCH) (default sm_90) against
#                    hip/hip_compat.h -> ./moert-nvidia and build/nvidia/test_runner, with
#                    libyaml, utf8proc, jansson, pcre2-8, xxhash, CUnit and cudart linked
#                    statically: they run on a GPU machine without those libraries (they
#                    need glibc >= this machine's, libgomp and libstdc++ only).
#
# The C parts are the top Makefile's release objects (gcc, -Werror): the HIP objects define
# backend_hip_vtable, so the archive's runtime/backend_hip_none.o is never linked in.

HIPCC       ?= hipcc
GPU_TARGETS ?= gfx90a
NVCC        ?= $(firstword $(wildcard /usr/local/cuda/bin/nvcc) nvcc)
NV_ARCH     ?= sm_90
CC          ?= gcc

REL      := build/release
C_MAIN   := $(REL)/runtime/cli/main.o
C_LIB    := $(REL)/libmoert.a
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(REL)/%.o)

HIP_SRC  := $(wildcard hip/*.hip)
# hip_scratch.c is in the library already (the planner of every build needs it)
HIP_CSRC := $(filter-out hip/hip_scratch.c,$(wildcard hip/*.c))
HIP_DEPS := $(wildcard hip/*.h runtime/*.h runtime/*/*.h arena/*.h) hip/hip.mk

# Static archives by path: linker flag order is not reliable through nvcc.
static_lib = $(shell $(CC) -print-file-name=lib$(1).a)
STATIC_ARCHIVES := $(foreach l,yaml utf8proc jansson pcre2-8 xxhash,$(call static_lib,$(l)))
CUNIT_ARCHIVE   := $(call static_lib,cunit)

CWARN  := -Wall -Wextra -Werror -Wno-format-truncation -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS_HIP := -std=c11 -D_GNU_SOURCE -fopenmp -ffp-contract=off $(CWARN) -O2 -g -MMD -MP

# ---- NVIDIA ------------------------------------------------------------------------
# NV_EXTRA=-DMOERT_HIP_TIMELINE=1 NV_DIR=build/nvtl: the measurement build of hip/NOTES.md
# "Profiling" (its stamps live outside the plan; never a release binary)
NV_EXTRA ?=
NV_DIR   ?= build/nvidia
NV_OBJ   := $(HIP_SRC:hip/%.hip=$(NV_DIR)/hip/%.o) $(HIP_CSRC:hip/%.c=$(NV_DIR)/hip/%.o)
NVFLAGS  := -x cu -arch=$(NV_ARCH) -O3 -std=c++17 --Werror all-warnings \
            -Xcompiler -Wall,-Wextra,-Wshadow,-Werror -DMOERT_HIP_TARGET='"$(NV_ARCH)"' $(NV_EXTRA)
NVLINK   := -arch=$(NV_ARCH) --cudart=static

# ---- AMD ---------------------------------------------------------------------------
HIP_DIR  := build/hip
HIP_OBJ  := $(HIP_SRC:hip/%.hip=$(HIP_DIR)/hip/%.o) $(HIP_CSRC:hip/%.c=$(HIP_DIR)/hip/%.o)
HIPFLAGS := $(foreach t,$(GPU_TARGETS),--offload-arch=$(t)) -O3 -std=c++17 -Wall -Wextra -Wshadow -Werror \
            -DMOERT_HIP_TARGET='"$(GPU_TARGETS)"'

.PHONY: hip hip-nvidia c-parts c-tests
hip: pdl-check moert-hip
hip-nvidia: pdl-check moert-nvidia $(NV_DIR)/test_runner

.PHONY: pdl-check
pdl-check:
	sh tools/check-pdl.sh hip/kernels.hip hip/gemm_mma.hip hip/gemm_qmma.hip hip/qact.hip hip/attn_prefill.hip

# The C objects are the top Makefile's business; ask it every time (it is incremental).
c-parts:
	$(MAKE) --no-print-directory V=release $(C_LIB) $(C_MAIN)
c-tests: c-parts
	$(MAKE) --no-print-directory V=release test-objs

$(C_LIB) $(C_MAIN): c-parts
	@:
$(TEST_OBJ): c-tests
	@:

$(NV_DIR)/hip/%.o: hip/%.hip $(HIP_DEPS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(NV_DIR)/hip/%.o: hip/%.c $(HIP_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_HIP) -c $< -o $@

moert-nvidia: $(C_MAIN) $(NV_OBJ) $(C_LIB)
	$(NVCC) $(NVLINK) -o $@ $(C_MAIN) $(NV_OBJ) $(C_LIB) $(STATIC_ARCHIVES) \
	    -Xcompiler -fopenmp -lgomp -lm -lpthread -ldl -lrt

$(NV_DIR)/test_runner: $(TEST_OBJ) $(NV_OBJ) $(C_LIB)
	$(NVCC) $(NVLINK) -o $@ $(TEST_OBJ) $(NV_OBJ) $(C_LIB) $(CUNIT_ARCHIVE) $(STATIC_ARCHIVES) \
	    -Xcompiler -fopenmp -lgomp -lm -lpthread -ldl -lrt

$(HIP_DIR)/hip/%.o: hip/%.hip $(HIP_DEPS)
	@mkdir -p $(dir $@)
	$(HIPCC) $(HIPFLAGS) -c $< -o $@

$(HIP_DIR)/hip/%.o: hip/%.c $(HIP_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_HIP) -c $< -o $@

moert-hip: $(C_MAIN) $(HIP_OBJ) $(C_LIB)
	$(HIPCC) $(foreach t,$(GPU_TARGETS),--offload-arch=$(t)) -o $@ $(C_MAIN) $(HIP_OBJ) $(C_LIB) \
	    $(STATIC_ARCHIVES) -lgomp -lm -lpthread

-include $(wildcard $(NV_DIR)/hip/*.d $(HIP_DIR)/hip/*.d)
