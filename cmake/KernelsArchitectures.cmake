# Turns CMAKE_CUDA_ARCHITECTURES into nvcc -gencode flags for the custom fatbin command.
#
# Accepted entries (CMake's own syntax): "<n>" = SASS for sm_<n> plus PTX for compute_<n>; "<n>-real" = SASS only;
# "<n>-virtual" = PTX only; <n> may carry an "a" suffix (90a: the Hopper-only wgmma/setmaxnreg features).
# Default when unset: "80-real;90" = sm_80 and sm_90 SASS + compute_90 PTX (the PTX lets newer GPUs JIT).
include_guard(GLOBAL)

# Call before project(), so CMake's CUDA check uses the same list and never falls back to nvcc's default arch.
macro(kernels_default_architectures)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
        set(CMAKE_CUDA_ARCHITECTURES "80-real;90" CACHE STRING
            "GPU targets of kernels.fatbin: <n> (SASS+PTX), <n>-real (SASS), <n>-virtual (PTX); e.g. 80-real;90 or 90a")
    endif()
endmacro()

# out_flags: the -gencode arguments; out_sass / out_ptx: sm_XX / compute_XX names, for the manifest and its check.
function(kernels_gencode_flags archs out_flags out_sass out_ptx)
    set(flags "")
    set(sass "")
    set(ptx "")
    foreach(entry IN LISTS archs)
        if(NOT entry MATCHES "^([0-9]+a?)(-real|-virtual)?$")
            message(FATAL_ERROR
                "CMAKE_CUDA_ARCHITECTURES entry '${entry}' is not supported by the kernels build: use <n>, "
                "<n>-real or <n>-virtual with an explicit number (e.g. 80-real;90 or 90a), not all/all-major/native.")
        endif()
        set(n "${CMAKE_MATCH_1}")
        set(kind "${CMAKE_MATCH_2}")
        if(kind STREQUAL "-real")
            list(APPEND flags -gencode "arch=compute_${n},code=sm_${n}")
            list(APPEND sass "sm_${n}")
        elseif(kind STREQUAL "-virtual")
            list(APPEND flags -gencode "arch=compute_${n},code=compute_${n}")
            list(APPEND ptx "compute_${n}")
        else()
            # Two flags rather than code=[sm_n,compute_n]: brackets are a glob pattern to the shell make uses.
            list(APPEND flags -gencode "arch=compute_${n},code=sm_${n}" -gencode "arch=compute_${n},code=compute_${n}")
            list(APPEND sass "sm_${n}")
            list(APPEND ptx "compute_${n}")
        endif()
    endforeach()
    if(NOT sass AND NOT ptx)
        message(FATAL_ERROR "CMAKE_CUDA_ARCHITECTURES is empty: name at least one target, e.g. 80-real;90")
    endif()
    set(${out_flags} "${flags}" PARENT_SCOPE)
    set(${out_sass} "${sass}" PARENT_SCOPE)
    set(${out_ptx} "${ptx}" PARENT_SCOPE)
endfunction()
