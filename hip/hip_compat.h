/* hip_compat: the HIP subset moert's GPU backend uses, on AMD (hipcc, the real HIP headers)
 * and on NVIDIA (nvcc -x cu, mapped here onto the CUDA runtime).  Debian's HIP 5.2
 * "nvidia platform" headers do not compile against CUDA 13, so they are never used.
 *
 * Device code is single-source: kernel<<<grid, block, shmem, stream>>>(...) works on both.
 * Kernels must not assume a warp size: MOERT_WARP is the device's (64 on CDNA, 32 on
 * NVIDIA) and is only meaningful in device code; host code never depends on it (blocks are
 * sized in threads and kernels derive warps from blockDim).
 */
#ifndef MOERT_HIP_COMPAT_H
#define MOERT_HIP_COMPAT_H

#include <stdint.h>

#if defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__) || defined(__HIP_PLATFORM_HCC__)
/* ---------------------------------------------------------------- AMD: real HIP */
#include <hip/hip_runtime.h>

#define MOERT_HIP_AMD 1
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define MOERT_WARP __AMDGCN_WAVEFRONT_SIZE
#else
#define MOERT_WARP 64
#endif

/* the largest dynamic shared memory a block may ask for (AMD has no opt-in step) */
#define MOERT_ATTR_SMEM_OPTIN hipDeviceAttributeMaxSharedMemoryPerBlock

#define moert_shfl_xor(v, m) __shfl_xor((v), (m))
#define moert_shfl(v, src) __shfl((v), (src))
#define moert_shfl_up(v, d) __shfl_up((v), (d))
static __device__ __forceinline__ uint64_t moert_ballot(int pred)
{
    return (uint64_t)__ballot(pred);
}
static __device__ __forceinline__ int moert_popc64(uint64_t x)
{
    return __popcll(x);
}
/* HIP 5.2: hipGraphInstantiate(exec, graph, error node, log buffer, log size) */
#define moert_graph_instantiate(exec, graph) hipGraphInstantiate((exec), (graph), NULL, NULL, 0)

/* No programmatic dependent launch on AMD: an ordinary launch, and nothing to wait for. */
#define MOERT_LAUNCH(kernel, grid, block, smem, stream, ...)                                     \
    hipLaunchKernelGGL(kernel, dim3(grid), dim3(block), (smem), (stream), __VA_ARGS__)
static __device__ __forceinline__ void moert_pdl_wait(void) {}
static __device__ __forceinline__ void moert_pdl_wait_release(bool late) { (void)late; }
static __device__ __forceinline__ void moert_prefetch_l2(const void *p) { (void)p; }
/* A load that bypasses the SM's L1 (no PDL on AMD: every kernel starts after its predecessors) */
template <typename T> static __device__ __forceinline__ T moert_ldcg(const T *p)
{
    return *p;
}
static inline void moert_set_pdl(bool on) { (void)on; }

#elif defined(__CUDACC__)
/* ---------------------------------------------------------------- NVIDIA: CUDA */
#include <cuda_runtime.h>

#define MOERT_HIP_NVIDIA 1
#define MOERT_WARP 32

typedef cudaError_t hipError_t;
typedef cudaStream_t hipStream_t;
typedef cudaEvent_t hipEvent_t;
typedef cudaGraph_t hipGraph_t;
typedef cudaGraphExec_t hipGraphExec_t;
typedef cudaDeviceProp hipDeviceProp_t;

#define hipSuccess cudaSuccess
#define hipErrorNotReady cudaErrorNotReady
#define hipErrorInvalidValue cudaErrorInvalidValue
#define hipGetErrorString cudaGetErrorString
#define hipGetLastError cudaGetLastError
#define hipPeekAtLastError cudaPeekAtLastError
#define hipGetDeviceCount cudaGetDeviceCount
#define hipSetDevice cudaSetDevice
#define hipGetDevice cudaGetDevice
#define hipGetDeviceProperties cudaGetDeviceProperties
#define hipDeviceSynchronize cudaDeviceSynchronize
#define hipDeviceGetAttribute cudaDeviceGetAttribute
#define MOERT_ATTR_SMEM_OPTIN cudaDevAttrMaxSharedMemoryPerBlockOptin
#define hipDeviceAttributeMultiprocessorCount cudaDevAttrMultiProcessorCount
#define hipMemGetInfo cudaMemGetInfo

#define hipMalloc cudaMalloc
#define hipFree cudaFree
#define hipHostMalloc(p, n, flags) cudaHostAlloc((p), (n), (flags))
#define hipHostMallocDefault cudaHostAllocDefault
#define hipHostMallocMapped cudaHostAllocMapped
#define hipHostGetDevicePointer cudaHostGetDevicePointer
#define hipHostFree cudaFreeHost
#define hipHostRegister cudaHostRegister
#define hipHostUnregister cudaHostUnregister
#define hipHostRegisterDefault cudaHostRegisterDefault
#define hipMemcpy cudaMemcpy
#define hipMemcpyAsync cudaMemcpyAsync
#define hipMemset cudaMemset
#define hipMemsetAsync cudaMemsetAsync
#define hipMemcpyHostToDevice cudaMemcpyHostToDevice
#define hipMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define hipMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define hipMemcpyFromSymbol cudaMemcpyFromSymbol
#define hipMemcpyToSymbol cudaMemcpyToSymbol
#define HIP_SYMBOL(x) x

#define hipStreamCreateWithFlags cudaStreamCreateWithFlags
#define hipStreamNonBlocking cudaStreamNonBlocking
#define hipStreamDestroy cudaStreamDestroy
#define hipStreamSynchronize cudaStreamSynchronize
#define hipStreamBeginCapture cudaStreamBeginCapture
#define hipStreamEndCapture cudaStreamEndCapture
#define hipStreamWaitEvent cudaStreamWaitEvent
#define hipStreamCaptureModeThreadLocal cudaStreamCaptureModeThreadLocal
#define hipStreamCaptureModeRelaxed cudaStreamCaptureModeRelaxed

#define hipEventCreate cudaEventCreate
#define hipEventCreateWithFlags cudaEventCreateWithFlags
#define hipEventDisableTiming cudaEventDisableTiming
#define hipEventDefault cudaEventDefault
#define hipEventRecord cudaEventRecord
#define hipEventSynchronize cudaEventSynchronize
#define hipEventQuery cudaEventQuery
#define hipEventElapsedTime cudaEventElapsedTime
#define hipEventDestroy cudaEventDestroy

#define hipGraphLaunch cudaGraphLaunch
#define hipGraphExecDestroy cudaGraphExecDestroy
#define hipGraphDestroy cudaGraphDestroy
/* CUDA 12+: cudaGraphInstantiate(exec, graph, flags) */
#define moert_graph_instantiate(exec, graph) cudaGraphInstantiate((exec), (graph), 0)

#define hipFuncSetAttribute(f, attr, v) cudaFuncSetAttribute((f), (attr), (v))
#define hipOccupancyMaxActiveBlocksPerMultiprocessor cudaOccupancyMaxActiveBlocksPerMultiprocessor
#define hipFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize

#define moert_shfl_xor(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#define moert_shfl(v, src) __shfl_sync(0xffffffffu, (v), (src))
#define moert_shfl_up(v, d) __shfl_up_sync(0xffffffffu, (v), (d))
static __device__ __forceinline__ uint64_t moert_ballot(int pred)
{
    return (uint64_t)__ballot_sync(0xffffffffu, pred);
}
static __device__ __forceinline__ int moert_popc64(uint64_t x)
{
    return __popcll((unsigned long long)x);
}

/* Programmatic dependent launch (Hopper): the next kernel in the stream may be launched
 * while this one drains, hiding launch latency between the ~100 small kernels of a decode
 * step.  Every kernel calls moert_pdl_wait() before touching anything its predecessor
 * wrote (it returns once that grid has completed and its memory is visible).  It lets its
 * own dependents launch first, so a chain of kernels can be resident at once, each with
 * its early reads (weights: PDL_EARLY_READS) issued under the latency-bound kernels before
 * it, not only under its predecessor (bench-gpu decode +2%, +4% with the decode fusions,
 * hip/NOTES.md).  Still the results of ordinary serialisation: a kernel's wait returns
 * after its predecessor completed, which happened after that one's own wait, and so on
 * back; what a kernel reads before its wait no kernel of the step writes, and every step
 * starts with a host copy (its parameters), which waits for all earlier work. */
#include <utility>
extern bool moert_pdl_enabled;
static inline void moert_set_pdl(bool on)
{
    moert_pdl_enabled = on;
}
template <typename... KArgs, typename... Args>
static inline cudaError_t moert_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                       cudaStream_t stream, Args &&...args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = moert_pdl_enabled ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}
#define MOERT_LAUNCH(kernel, grid, block, smem, stream, ...)                                     \
    moert_launch(kernel, dim3(grid), dim3(block), (smem), (stream), __VA_ARGS__)
/* A load through L2 only (ld.global.cg): not a line an earlier grid left in this SM's L1 */
template <typename T> static __device__ __forceinline__ T moert_ldcg(const T *p)
{
    return __ldcg(p);
}
/* A hint: fetch the 128-byte line holding p into L2.  Never changes a result. */
static __device__ __forceinline__ void moert_prefetch_l2(const void *p)
{
#if defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}
static __device__ __forceinline__ void moert_pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    /* dependents first: see above */
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
/* As moert_pdl_wait(), but with `late` the dependents launch only after the wait returned:
 * a dependent that starts then knows that every grid before this one has completed. */
static __device__ __forceinline__ void moert_pdl_wait_release(bool late)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (!late)
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (late)
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#else
    (void)late;
#endif
}
#if MOERT_HIP_TIMELINE
/* Measurement build only (-DMOERT_HIP_TIMELINE=1): block 0 of every kernel stamps the
 * global timer when its wait returns, with the source line of the wait, so the gaps
 * between consecutive stamps are each kernel's cost on the step's critical path. */
#define MOERT_TL_MAX 4096
static __device__ unsigned long long moert_tl_t[MOERT_TL_MAX];
static __device__ unsigned moert_tl_line[MOERT_TL_MAX];
static __device__ unsigned moert_tl_n;
static __device__ __forceinline__ void moert_tl_rec(unsigned line)
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    unsigned i = atomicAdd(&moert_tl_n, 1u);
    if (i < MOERT_TL_MAX) {
        moert_tl_t[i] = t;
        moert_tl_line[i] = line;
    }
}
static __device__ __forceinline__ void moert_tl_mark(unsigned line)
{
    if ((blockIdx.x | blockIdx.y | blockIdx.z | threadIdx.x | threadIdx.y | threadIdx.z) == 0)
        moert_tl_rec(line);
}
#define moert_pdl_wait() (moert_pdl_wait(), moert_tl_mark(__LINE__))
#define moert_pdl_wait_release(l) (moert_pdl_wait_release(l), moert_tl_mark(__LINE__))
#endif

#else
#error "hip_compat.h: compile with hipcc (AMD) or nvcc -x cu (NVIDIA)"
#endif

/* c + the dot product of the four signed bytes of a and of b, exact in int32 (act-q8's
 * integer products): dp4a on NVIDIA (sm_61+), v_dot4_i32_i8 on AMD (gfx906, gfx908,
 * gfx90a: `dot1-insts`), the plain sum on the host (the self-tests run it there). */
static __host__ __device__ __forceinline__ int moert_dp4a(int a, int b, int c)
{
#if defined(__CUDA_ARCH__)
    return __dp4a(a, b, c);
#elif defined(__HIP_DEVICE_COMPILE__)
    return __builtin_amdgcn_sdot4(a, b, c, false);
#else
    for (int i = 0; i < 4; i++)
        c += (int)(signed char)(unsigned char)((unsigned)a >> (8 * i)) *
             (int)(signed char)(unsigned char)((unsigned)b >> (8 * i));
    return c;
#endif
}

#endif
