# find_package(CUDAToolkit REQUIRED), working around Debian 12's CMake 3.25.1 with CUDA 13.
#
# The stock FindCUDAToolkit (cmake-data 3.25.1-1) sets a DEPRECATION property on CUDA::nvToolsExt
# without checking that the target exists, whenever the project asks for CMake >= 3.25. CUDA 13
# ships no libnvToolsExt (only the header-only nvtx3), so the target is never created and the
# configure stops with "set_property could not find TARGET CUDA::nvToolsExt". (Upstream CMake
# guards that call since 3.26; a machine whose module was patched the same way does not show the
# error, which is why a container with stock cmake-data did and the host did not.) An empty
# imported target of that name, defined only where the toolkit has no such library, satisfies
# the module; nothing in Pagoda links it.
if(NOT TARGET CUDA::nvToolsExt)
  get_filename_component(_pagoda_cuda_root "${CMAKE_CUDA_COMPILER}" DIRECTORY)
  get_filename_component(_pagoda_cuda_root "${_pagoda_cuda_root}" DIRECTORY)
  find_library(_pagoda_nvtoolsext NAMES nvToolsExt
               HINTS "${_pagoda_cuda_root}" PATH_SUFFIXES lib64 lib lib/x64 NO_CACHE)
  if(NOT _pagoda_nvtoolsext)
    add_library(CUDA::nvToolsExt INTERFACE IMPORTED)
  endif()
endif()
find_package(CUDAToolkit REQUIRED)
