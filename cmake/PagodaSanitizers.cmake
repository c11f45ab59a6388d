# Instrumented builds (scripts/fuzz.sh, scripts/sanitize.sh); nothing changes when both are unset.
#   PAGODA_SANITIZE=address,undefined | thread   the whole tree compiled and linked with it
#   PAGODA_FUZZ=ON                               clang only: libFuzzer coverage + ASan + UBSan on
#                                                the tree; tests/fuzz targets link libFuzzer
set(PAGODA_SANITIZE "" CACHE STRING "Sanitizers for the whole build (e.g. address,undefined)")
option(PAGODA_FUZZ "Build tests/fuzz as libFuzzer targets (clang)" OFF)
if(PAGODA_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "PAGODA_FUZZ needs clang (CXX=clang++)")
  endif()
  set(PAGODA_SANITIZE "address,undefined")
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=fuzzer-no-link>
                      # clang's lock analysis flags engine code that gcc never checks (reported,
                      # not fixed here): keep it a warning so the fuzz build goes on.
                      $<$<COMPILE_LANGUAGE:CXX>:-Wno-error=thread-safety-analysis>)
endif()
if(PAGODA_SANITIZE)
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=${PAGODA_SANITIZE}>
                      $<$<COMPILE_LANGUAGE:C,CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:C,CXX>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=${PAGODA_SANITIZE})
endif()
