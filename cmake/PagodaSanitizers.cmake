# Instrumented builds (scripts/fuzz.sh, scripts/sanitize.sh); nothing changes when both are unset.
#   PAGODA_SANITIZE=address,undefined | thread   the whole tree compiled and linked with it
#                                                (thread: every executable also gets
#                                                scripts/sanitizers/tsan_absl_sync.cc, which
#                                                shows TSan abseil's locks; see that file)
#   PAGODA_FUZZ=ON                               clang only: libFuzzer coverage + ASan + UBSan on
#                                                the tree; tests/fuzz targets link libFuzzer
#   PAGODA_FUZZ_COVERAGE=ON                      clang only: source-based coverage (llvm-cov) on
#                                                the tree; tests/fuzz targets replay files
#                                                (scripts/fuzz-coverage.sh)
set(PAGODA_SANITIZE "" CACHE STRING "Sanitizers for the whole build (e.g. address,undefined)")
option(PAGODA_FUZZ "Build tests/fuzz as libFuzzer targets (clang)" OFF)
if(PAGODA_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "PAGODA_FUZZ needs clang (CXX=clang++)")
  endif()
  set(PAGODA_SANITIZE "address,undefined")
  # A clang build: -Wthread-safety (cmake/PagodaWarnings.cmake) is an error here too, so the fuzz
  # build (CI runs it) checks the lock annotations gcc ignores.
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=fuzzer-no-link>)
endif()
option(PAGODA_FUZZ_COVERAGE "Source-based coverage for tests/fuzz corpus replays (clang)" OFF)
if(PAGODA_FUZZ_COVERAGE)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang" OR PAGODA_FUZZ)
    message(FATAL_ERROR "PAGODA_FUZZ_COVERAGE needs clang (CXX=clang++) and PAGODA_FUZZ off")
  endif()
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fprofile-instr-generate>
                      $<$<COMPILE_LANGUAGE:C,CXX>:-fcoverage-mapping>)
  add_link_options(-fprofile-instr-generate)
endif()
if(PAGODA_SANITIZE)
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=${PAGODA_SANITIZE}>
                      $<$<COMPILE_LANGUAGE:C,CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:C,CXX>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=${PAGODA_SANITIZE})
endif()

# Debian's abseil is not TSan-instrumented: every executable of a TSan build carries the
# annotations of abseil's Mutex / CondVar / Notification (interposed, see the file).
# pagoda_sanitizer_executables() runs once all components are added.
if(PAGODA_SANITIZE MATCHES "thread")
  add_library(pagoda_tsan_absl_sync OBJECT ${PROJECT_SOURCE_DIR}/scripts/sanitizers/tsan_absl_sync.cc)
  target_link_libraries(pagoda_tsan_absl_sync PRIVATE absl::time)
endif()

function(pagoda_sanitizer_executables dir)
  if(NOT TARGET pagoda_tsan_absl_sync)
    return()
  endif()
  get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target ${targets})
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "EXECUTABLE")
      target_sources(${target} PRIVATE $<TARGET_OBJECTS:pagoda_tsan_absl_sync>)
    endif()
  endforeach()
  get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
  foreach(subdir ${subdirs})
    pagoda_sanitizer_executables(${subdir})
  endforeach()
endfunction()
