# transport's CUDA paths (batched page copies, CUDA IPC, prefill -> decode handoff). Included by
# transport/CMakeLists.txt when PAGODA_HAVE_CUDA, and by bench/gpu/CMakeLists.txt in its standalone
# build on the GPU machine: it needs only CUDA and absl (no UCX), so it builds there.
set(_pagoda_transport_dir ${CMAKE_CURRENT_LIST_DIR})
get_filename_component(_pagoda_root ${_pagoda_transport_dir}/.. ABSOLUTE)
add_library(pagoda_transport_cuda
  ${_pagoda_transport_dir}/src/cuda/cuda_status.cc
  ${_pagoda_transport_dir}/src/cuda/gpu_copy.cc
  ${_pagoda_transport_dir}/src/cuda/cuda_ipc.cc
  ${_pagoda_transport_dir}/src/cuda/kv_handoff.cc)
target_include_directories(pagoda_transport_cuda
  PUBLIC ${_pagoda_transport_dir}/include
  PRIVATE ${_pagoda_root})
target_link_libraries(pagoda_transport_cuda
  PUBLIC absl::status absl::statusor absl::span absl::time CUDA::cudart
  PRIVATE absl::strings CUDA::cuda_driver Threads::Threads pagoda_warnings)

# Pool-to-pool copies through the kernels' gather/scatter, where the kernels are built.
if(TARGET pagoda_kernels_cuda)
  target_sources(pagoda_transport_cuda PRIVATE ${_pagoda_transport_dir}/src/cuda/pool_copy.cc)
  target_link_libraries(pagoda_transport_cuda PUBLIC pagoda_kernels_cuda)
endif()

# GPU tests: need a GPU, so built everywhere (CI compiles them) but not registered with CTest;
# bench/gpu/run.sh runs them on the GPU machine.
add_executable(pagoda_transport_cuda_test ${_pagoda_transport_dir}/src/cuda/gpu_transport_test.cc)
target_include_directories(pagoda_transport_cuda_test PRIVATE ${_pagoda_root})
target_link_libraries(pagoda_transport_cuda_test PRIVATE pagoda_transport_cuda GTest::gtest
                      GTest::gtest_main pagoda_warnings)
