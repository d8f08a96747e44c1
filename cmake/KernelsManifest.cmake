# Build-time script (cmake -P): checks kernels.fatbin against kernels/exports.txt and writes kernels.manifest.json.
#
# Inputs (-D): FATBIN, MANIFEST (output path), EXPORTS (kernels/exports.txt), ABI_HEADER (kernels/include/abi.h),
#   SASS and PTX (requested targets, comma-separated: sm_80,sm_90 / compute_90), NVCC_VERSION, CUOBJDUMP (may be
#   empty or "...-NOTFOUND").
# The check: every SASS arch and every PTX in the fatbin must export exactly the kernels in exports.txt (missing and
#   extra names both fail), the fatbin must hold exactly the requested targets, and each must define
#   kernels_abi_version. Without cuobjdump the manifest is written from exports.txt with "verified": false.
cmake_minimum_required(VERSION 3.20)

foreach(var FATBIN MANIFEST EXPORTS ABI_HEADER NVCC_VERSION)
    if(NOT DEFINED ${var})
        message(FATAL_ERROR "KernelsManifest.cmake: -D${var}=... is required")
    endif()
endforeach()
string(REPLACE "," ";" requested_sass "${SASS}")
string(REPLACE "," ";" requested_ptx "${PTX}")

# --- expected kernels and ABI version -----------------------------------------------------------------------------
file(STRINGS "${EXPORTS}" export_lines)
set(expected "")
foreach(line IN LISTS export_lines)
    string(REGEX REPLACE "#.*$" "" line "${line}")
    string(STRIP "${line}" line)
    if(line)
        list(APPEND expected "${line}")
    endif()
endforeach()
list(SORT expected)

file(STRINGS "${ABI_HEADER}" abi_line REGEX "^#define KERNELS_ABI_VERSION [0-9]+")
if(NOT abi_line MATCHES "KERNELS_ABI_VERSION ([0-9]+)")
    message(FATAL_ERROR "${ABI_HEADER} does not #define KERNELS_ABI_VERSION <n>")
endif()
set(abi_version "${CMAKE_MATCH_1}")

file(SHA256 "${FATBIN}" fatbin_sha256)
file(SIZE "${FATBIN}" fatbin_size)

# --- what the fatbin holds ----------------------------------------------------------------------------------------
# Parses cuobjdump output: "Fatbin elf code:" / "Fatbin ptx code:" open a section, "arch = sm_XX" names it; kernel
# entries are "STT_FUNC STB_GLOBAL STO_ENTRY <name>" (-symbols, ELF) or ".entry <name>(" (-ptx).
# Only sections of `want_kind` (elf | ptx) count: `cuobjdump -ptx` still prints the ELF sections' headers.
function(parse_cuobjdump text want_kind out_targets)
    string(REPLACE ";" "," text "${text}")
    string(REPLACE "\n" ";" lines "${text}")
    set(kind "")
    set(target "")
    set(targets "")
    foreach(line IN LISTS lines)
        if(line MATCHES "^Fatbin (elf|ptx) code:")
            set(kind "${CMAKE_MATCH_1}")
        elseif(NOT kind STREQUAL want_kind)
            continue()
        elseif(line MATCHES "^arch = sm_([0-9]+a?)")
            if(kind STREQUAL "elf")
                set(target "sm_${CMAKE_MATCH_1}")
            else()
                set(target "compute_${CMAKE_MATCH_1}")
            endif()
            list(APPEND targets "${target}")
            set(kernels_${target} "")
            set(abi_${target} FALSE)
        # Separate branches: with `A OR B`, CMake evaluates both MATCHES and B's failure clears CMAKE_MATCH_1.
        elseif(line MATCHES "^STT_FUNC +STB_GLOBAL +STO_ENTRY +([A-Za-z0-9_]+)")
            list(APPEND kernels_${target} "${CMAKE_MATCH_1}")
        elseif(line MATCHES "\\.entry ([A-Za-z0-9_]+)\\(")
            list(APPEND kernels_${target} "${CMAKE_MATCH_1}")
        elseif(line MATCHES "^STT_OBJECT .* kernels_abi_version$" OR line MATCHES "\\.u32 kernels_abi_version")
            set(abi_${target} TRUE)
        endif()
    endforeach()
    foreach(t IN LISTS targets)
        set(kernels_${t} "${kernels_${t}}" PARENT_SCOPE)
        set(abi_${t} "${abi_${t}}" PARENT_SCOPE)
    endforeach()
    set(${out_targets} "${targets}" PARENT_SCOPE)
endfunction()

set(verified false)
set(found_sass "${requested_sass}")
set(found_ptx "${requested_ptx}")
if(CUOBJDUMP AND EXISTS "${CUOBJDUMP}")
    set(errors "")
    execute_process(COMMAND "${CUOBJDUMP}" -symbols "${FATBIN}" OUTPUT_VARIABLE elf_out RESULT_VARIABLE rc1 ERROR_VARIABLE err1)
    execute_process(COMMAND "${CUOBJDUMP}" -ptx "${FATBIN}" OUTPUT_VARIABLE ptx_out RESULT_VARIABLE rc2 ERROR_VARIABLE err2)
    if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0)
        message(FATAL_ERROR "cuobjdump failed on ${FATBIN}:\n${err1}${err2}")
    endif()
    parse_cuobjdump("${elf_out}" elf elf_targets)
    parse_cuobjdump("${ptx_out}" ptx ptx_targets)
    set(found_sass "${elf_targets}")
    set(found_ptx "${ptx_targets}")

    set(want_targets ${requested_sass} ${requested_ptx})
    set(have_targets ${found_sass} ${found_ptx})
    list(SORT want_targets)
    list(SORT have_targets)
    if(NOT want_targets STREQUAL have_targets)
        list(APPEND errors "targets: requested [${want_targets}], fatbin holds [${have_targets}]")
    endif()
    foreach(t IN LISTS have_targets)
        set(have "${kernels_${t}}")
        list(SORT have)
        set(missing "${expected}")
        list(REMOVE_ITEM missing ${have})
        set(extra "${have}")
        list(REMOVE_ITEM extra ${expected})
        if(missing)
            list(APPEND errors "${t}: missing [${missing}]")
        endif()
        if(extra)
            list(APPEND errors "${t}: not in exports.txt [${extra}]")
        endif()
        if(NOT abi_${t})
            list(APPEND errors "${t}: no kernels_abi_version symbol")
        endif()
        list(LENGTH have n)
        message(STATUS "kernels.fatbin ${t}: ${n} kernels")
    endforeach()
    if(errors)
        string(REPLACE ";" "\n  " errors "${errors}")
        message(FATAL_ERROR "kernels.fatbin does not match kernels/exports.txt:\n  ${errors}")
    endif()
    set(verified true)
else()
    message(WARNING "cuobjdump not found: kernels.manifest.json lists kernels/exports.txt unverified")
endif()

# --- manifest -----------------------------------------------------------------------------------------------------
function(json_array list out)
    set(items "")
    foreach(x IN LISTS list)
        list(APPEND items "\"${x}\"")
    endforeach()
    string(REPLACE ";" ", " items "${items}")
    set(${out} "[${items}]" PARENT_SCOPE)
endfunction()

json_array("${found_sass}" sass_json)
json_array("${found_ptx}" ptx_json)
set(kernel_items "")
foreach(k IN LISTS expected)
    list(APPEND kernel_items "    \"${k}\"")
endforeach()
string(REPLACE ";" ",\n" kernel_items "${kernel_items}")

file(WRITE "${MANIFEST}.tmp"
"{
  \"abi_version\": ${abi_version},
  \"fatbin\": \"kernels.fatbin\",
  \"sha256\": \"${fatbin_sha256}\",
  \"size\": ${fatbin_size},
  \"nvcc_version\": \"${NVCC_VERSION}\",
  \"sass\": ${sass_json},
  \"ptx\": ${ptx_json},
  \"verified\": ${verified},
  \"kernels\": [
${kernel_items}
  ]
}
")
file(RENAME "${MANIFEST}.tmp" "${MANIFEST}")
