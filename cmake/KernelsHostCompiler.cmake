# Picks nvcc's host compiler before project() enables CUDA (CMake's compiler check already needs a working one).
#
# nvcc 11.x rejects gcc >= 12 ("unsupported GNU version"), which is Debian 12's default; clang 14 works. So when
# nvcc is 11.x, the default host gcc is >= 12, and nobody chose a host compiler (CMAKE_CUDA_HOST_COMPILER or the
# CUDAHOSTCXX environment variable), use clang++-14 (or clang-14). nvcc >= 12 keeps its own default.
include_guard(GLOBAL)

function(kernels_pick_host_compiler)
    if(DEFINED CMAKE_CUDA_HOST_COMPILER OR DEFINED ENV{CUDAHOSTCXX})
        return()
    endif()

    set(nvcc "${CMAKE_CUDA_COMPILER}")
    if(NOT nvcc AND DEFINED ENV{CUDACXX})
        set(nvcc "$ENV{CUDACXX}")
    endif()
    if(NOT nvcc)
        find_program(KERNELS_NVCC nvcc HINTS /usr/local/cuda/bin)
        set(nvcc "${KERNELS_NVCC}")
    endif()
    if(NOT nvcc)
        return() # project() reports the missing CUDA compiler with its own message
    endif()

    execute_process(COMMAND "${nvcc}" --version OUTPUT_VARIABLE nvcc_out ERROR_QUIET RESULT_VARIABLE nvcc_rc)
    if(NOT nvcc_rc EQUAL 0 OR NOT nvcc_out MATCHES "release ([0-9]+)\\.([0-9]+)")
        return()
    endif()
    set(nvcc_major "${CMAKE_MATCH_1}")
    if(nvcc_major GREATER_EQUAL 12)
        return()
    endif()

    find_program(KERNELS_HOST_GCC gcc)
    if(NOT KERNELS_HOST_GCC)
        return()
    endif()
    execute_process(COMMAND "${KERNELS_HOST_GCC}" -dumpfullversion OUTPUT_VARIABLE gcc_version
                    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(gcc_version VERSION_LESS 12)
        return()
    endif()

    find_program(KERNELS_CLANG14 NAMES clang++-14 clang-14)
    if(NOT KERNELS_CLANG14)
        message(FATAL_ERROR
            "nvcc ${nvcc_major}.x rejects the default host compiler gcc ${gcc_version}. Install clang-14 "
            "(apt-get install clang-14) or pass -DCMAKE_CUDA_HOST_COMPILER=<a g++ <= 11 or clang++ <= 14>.")
    endif()
    message(STATUS "kernels: nvcc ${nvcc_major}.x rejects gcc ${gcc_version}; host compiler ${KERNELS_CLANG14}")
    set(CMAKE_CUDA_HOST_COMPILER "${KERNELS_CLANG14}" CACHE FILEPATH "Host compiler nvcc uses (-ccbin)")
endfunction()

kernels_pick_host_compiler()
