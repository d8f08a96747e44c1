// libcuda.so.1 for a machine without a GPU: the subset of the CUDA driver API that Kernels.Interop binds (CuApi.cs),
// backed by host memory and by kernels.cu compiled for the host emulation (../include/cuda_emu.h). With it on
// LD_LIBRARY_PATH, the CUDA backend runs end to end on the CPU: every launch runs the real kernel source, every copy is
// a memcpy, so the C# side (launch plans, argument order, scratch layout, graphs, work items) is exercised as on a GPU,
// only slowly. Not a GPU: no timing, no concurrency, memory errors are host memory errors.
//
// Handles: a context, stream, event or module is a small heap object; a CUfunction points at the kernel's entry in
// the table generated from kernels/exports.txt (kernel_list.inc). Device pointers are host addresses. Streams run
// everything at once, in order, except while a stream is being captured: then launches and copies are recorded into
// the graph and run at cuGraphLaunch (with their arguments copied at capture, as CUDA does).
#include "kernels.cu"

// abi.h defines the version symbol for nvcc only (__CUDACC__); the emulated module exports the same value.
extern "C" int kernels_abi_version = KERNELS_ABI_VERSION;

#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace
{
using Op = std::function<void()>;

struct Graph
{
    std::vector<Op> ops;
};

struct Stream
{
    Graph* capture = nullptr;
};

struct Event
{
    std::chrono::steady_clock::time_point at;
};

std::mutex g_lock;
Stream g_default_stream;
int g_context_token;
int g_module_token;

Stream* stream_of(void* s) { return s ? static_cast<Stream*>(s) : &g_default_stream; }

void submit(void* stream, Op op)
{
    Stream* s = stream_of(stream);
    if (s->capture) s->capture->ops.push_back(std::move(op));
    else op();
}

// A kernel entry: binds the launch's argument values (copied) into a call of the emulated kernel.
using Binder = std::function<Op(void** params, uint3 grid, uint3 block, unsigned smem)>;

template <class... A, std::size_t... I>
Op bind_launch(void (*f)(A...), void** params, uint3 grid, uint3 block, unsigned smem, std::index_sequence<I...>)
{
    auto args = std::make_tuple(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
    return [f, args, grid, block, smem] {
        emu::launch(grid, block, smem, [&] { std::apply(f, args); });
    };
}

template <class... A>
Binder binder(void (*f)(A...))
{
    return [f](void** params, uint3 grid, uint3 block, unsigned smem) { return bind_launch(f, params, grid, block, smem, std::index_sequence_for<A...>{}); };
}

struct Kernel
{
    std::string name;
    Binder bind;
};

std::map<std::string, Kernel>& kernels()
{
    static std::map<std::string, Kernel> table = [] {
        std::map<std::string, Kernel> t;
#define KERNEL(name) t.emplace(#name, Kernel{#name, binder(&name)});
#include "kernel_list.inc"
#undef KERNEL
        return t;
    }();
    return table;
}

constexpr int kSuccess = 0, kInvalidValue = 1, kNotFound = 500, kNotSupported = 801;
} // namespace

extern "C" {
int cuInit(unsigned) { return kSuccess; }
int cuDriverGetVersion(int* v) { *v = 11080; return kSuccess; }
int cuDeviceGetCount(int* n) { *n = 1; return kSuccess; }
int cuDeviceGet(int* d, int ordinal) { *d = ordinal; return ordinal == 0 ? kSuccess : 101; }
int cuDeviceGetName(char* name, int length, int)
{
    std::snprintf(name, length, "CPU emulation of CUDA (kernels-emu)");
    return kSuccess;
}
int cuDeviceGetAttribute(int* value, int attribute, int)
{
    switch (attribute)
    {
    case 1: *value = 1024; break;        // max threads per block
    case 5: *value = 2147483647; break;  // max grid x
    case 6: *value = 65535; break;       // max grid y
    case 8: *value = 49152; break;       // max shared memory per block
    case 16: *value = 4; break;          // multiprocessors: few, so plans split little and the emulation stays quick
    case 75: *value = 8; break;          // compute capability 8.0
    case 76: *value = 0; break;
    default: *value = 0; break;
    }
    return kSuccess;
}
int cuDeviceTotalMem_v2(size_t* bytes, int) { *bytes = 8ull << 30; return kSuccess; }
int cuGetErrorName(int, const char** name) { *name = "CUDA_ERROR_EMULATED"; return kSuccess; }
int cuGetErrorString(int, const char** text) { *text = "an error of the CPU emulation of CUDA"; return kSuccess; }
int cuDevicePrimaryCtxRetain(void** ctx, int) { *ctx = &g_context_token; return kSuccess; }
int cuDevicePrimaryCtxRelease_v2(int) { return kSuccess; }
int cuCtxSetCurrent(void*) { return kSuccess; }
int cuCtxSynchronize() { return kSuccess; }

int cuModuleLoadDataEx(void** module, const void*, unsigned, int*, void**) { *module = &g_module_token; return kSuccess; }
int cuModuleGetFunction(void** function, void*, const char* name)
{
    auto it = kernels().find(name);
    if (it == kernels().end()) return kNotFound;
    *function = &it->second;
    return kSuccess;
}
int cuModuleGetGlobal_v2(unsigned long long* pointer, size_t* bytes, void*, const char* name)
{
    if (std::strcmp(name, "kernels_abi_version") != 0) return kNotFound;
    *pointer = reinterpret_cast<unsigned long long>(&kernels_abi_version);
    *bytes = sizeof(kernels_abi_version);
    return kSuccess;
}
int cuModuleUnload(void*) { return kSuccess; }
int cuFuncSetAttribute(void*, int, int) { return kSuccess; }

int cuMemAlloc_v2(unsigned long long* p, size_t bytes)
{
    void* m = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    if (!m) return 2;
    std::memset(m, 0, bytes);
    *p = reinterpret_cast<unsigned long long>(m);
    return kSuccess;
}
int cuMemFree_v2(unsigned long long p) { std::free(reinterpret_cast<void*>(p)); return kSuccess; }
int cuMemAllocHost_v2(void** p, size_t bytes)
{
    *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    return *p ? kSuccess : 2;
}
int cuMemFreeHost(void* p) { std::free(p); return kSuccess; }
int cuMemGetInfo_v2(size_t* free_bytes, size_t* total) { *free_bytes = 6ull << 30; *total = 8ull << 30; return kSuccess; }
int cuMemcpyHtoD_v2(unsigned long long dst, const void* src, size_t n) { std::memcpy(reinterpret_cast<void*>(dst), src, n); return kSuccess; }
int cuMemcpyDtoH_v2(void* dst, unsigned long long src, size_t n) { std::memcpy(dst, reinterpret_cast<void*>(src), n); return kSuccess; }
int cuMemcpyDtoD_v2(unsigned long long dst, unsigned long long src, size_t n) { std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<void*>(src), n); return kSuccess; }
int cuMemcpyHtoDAsync_v2(unsigned long long dst, const void* src, size_t n, void* s)
{
    submit(s, [=] { std::memcpy(reinterpret_cast<void*>(dst), src, n); });
    return kSuccess;
}
int cuMemcpyDtoHAsync_v2(void* dst, unsigned long long src, size_t n, void* s)
{
    submit(s, [=] { std::memcpy(dst, reinterpret_cast<void*>(src), n); });
    return kSuccess;
}
int cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t n, void* s)
{
    submit(s, [=] { std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<void*>(src), n); });
    return kSuccess;
}
int cuMemsetD8_v2(unsigned long long dst, unsigned char v, size_t n) { std::memset(reinterpret_cast<void*>(dst), v, n); return kSuccess; }
int cuProfilerStart() { return kSuccess; }
int cuProfilerStop() { return kSuccess; }

int cuStreamCreate(void** s, unsigned) { *s = new Stream(); return kSuccess; }
int cuStreamDestroy_v2(void* s) { delete static_cast<Stream*>(s); return kSuccess; }
int cuStreamSynchronize(void*) { return kSuccess; }
int cuEventCreate(void** e, unsigned) { *e = new Event(); return kSuccess; }
int cuEventRecord(void* e, void* s)
{
    auto* ev = static_cast<Event*>(e);
    submit(s, [ev] { ev->at = std::chrono::steady_clock::now(); });
    return kSuccess;
}
int cuEventSynchronize(void*) { return kSuccess; }
int cuEventElapsedTime(float* ms, void* start, void* end)
{
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(end)->at - static_cast<Event*>(start)->at).count();
    return kSuccess;
}
int cuEventDestroy_v2(void* e) { delete static_cast<Event*>(e); return kSuccess; }

int cuStreamBeginCapture_v2(void* s, int)
{
    Stream* st = stream_of(s);
    if (st == &g_default_stream || st->capture) return kNotSupported;
    st->capture = new Graph();
    return kSuccess;
}
int cuStreamEndCapture(void* s, void** graph)
{
    Stream* st = stream_of(s);
    if (!st->capture) return kInvalidValue;
    *graph = st->capture;
    st->capture = nullptr;
    return kSuccess;
}
int cuStreamIsCapturing(void* s, int* status) { *status = stream_of(s)->capture ? 1 : 0; return kSuccess; }
int cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long)
{
    *exec = new Graph(*static_cast<Graph*>(graph));
    return kSuccess;
}
int cuGraphLaunch(void* exec, void* s)
{
    for (auto& op : static_cast<Graph*>(exec)->ops) submit(s, op);
    return kSuccess;
}
int cuGraphExecDestroy(void* exec) { delete static_cast<Graph*>(exec); return kSuccess; }
int cuGraphDestroy(void* graph) { delete static_cast<Graph*>(graph); return kSuccess; }

int cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, void* stream,
                   void** params, void**)
{
    if (!function || !params || gx == 0 || gy == 0 || gz == 0 || bx == 0 || bx * by * bz > 1024) return kInvalidValue;
    auto* k = static_cast<Kernel*>(function);
    Op op = k->bind(params, uint3{gx, gy, gz}, uint3{bx, by, bz}, smem);
    std::lock_guard<std::mutex> lock(g_lock);
    submit(stream, std::move(op));
    return kSuccess;
}
}
