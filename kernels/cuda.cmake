# CUDA kernels (sm_90). Included by CMakeLists.txt only when PAGODA_HAVE_CUDA.
add_library(pagoda_kernels_cuda
  src/cuda/decode.cu
  src/cuda/summary.cu
  src/cuda/quest.cu
  src/cuda/kmeans.cu
  src/cuda/page_copy.cu
  src/cuda/pool_copy.cu
  src/cuda/head_gather.cu
  src/cuda/page_assembly.cu
  src/cuda/page_mass.cu
  src/cuda/prefill.cu)
target_include_directories(pagoda_kernels_cuda PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_link_libraries(pagoda_kernels_cuda PUBLIC pagoda_kernels_ref absl::status absl::statusor
                      CUDA::cudart PRIVATE pagoda_warnings)
target_compile_options(pagoda_kernels_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xptxas=-warn-spills>)
set_target_properties(pagoda_kernels_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)

# GPU tests: compare every kernel with its reference on fresh random inputs. They need a GPU, so
# they are built everywhere (CI compiles them) but registered with no CTest entry; bench/gpu/run.sh
# runs them on the GPU machine.
add_executable(kernels_cuda_test src/cuda/cuda_test.cc src/cuda/pool_copy_cuda_test.cc
  src/cuda/head_gather_cuda_test.cc src/cuda/page_mass_cuda_test.cc)
target_include_directories(kernels_cuda_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_link_libraries(kernels_cuda_test PRIVATE pagoda_kernels_cuda GTest::gtest
                      GTest::gtest_main pagoda_warnings)

# Block-sparse prefill on the GPU (GPU only, like kernels_cuda_test; bench/gpu/run.sh step
# prefill_test).
add_executable(kernels_prefill_cuda_test src/cuda/prefill_cuda_test.cc)
target_include_directories(kernels_prefill_cuda_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_link_libraries(kernels_prefill_cuda_test PRIVATE pagoda_kernels_cuda GTest::gtest
                      GTest::gtest_main pagoda_warnings)

# Host-side argument checks of the CUDA entry points: no GPU needed, so CI runs them.
pagoda_test(kernels_cuda_args_test SOURCES src/cuda/cuda_args_test.cc src/cuda/pool_copy_args_test.cc
  LIBS pagoda_kernels_cuda)
