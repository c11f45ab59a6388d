# The GPU tier on its own (CUDA runtime + absl only), so that it also builds in the standalone GPU
# build (bench/gpu: include this file after kernels/standalone.cmake) on a machine without RocksDB.
# Defines pagoda_kvstore_gpu_tier and its test pagoda_kvstore_gpu_tier_test when CUDA is present.
if(PAGODA_HAVE_CUDA AND NOT TARGET pagoda_kvstore_gpu_tier)
  add_library(pagoda_kvstore_gpu_tier STATIC ${CMAKE_CURRENT_LIST_DIR}/src/gpu_tier_cuda.cc)
  target_include_directories(pagoda_kvstore_gpu_tier PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include
                                                            ${CMAKE_CURRENT_LIST_DIR}/src)
  target_link_libraries(pagoda_kvstore_gpu_tier PUBLIC absl::status absl::statusor CUDA::cudart
                                                PRIVATE absl::str_format pagoda_warnings)
  pagoda_test(pagoda_kvstore_gpu_tier_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/src/gpu_tier_cuda_test.cc
              LIBS pagoda_kvstore_gpu_tier)
endif()
