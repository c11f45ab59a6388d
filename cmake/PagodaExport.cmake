# find_package(Pagoda) for C++ users of the in-process decode path: `cmake --install build
# --prefix P` installs the decode worker and the embedded store (static libraries), the public
# headers and P/lib/cmake/Pagoda/PagodaConfig.cmake; then
#   find_package(Pagoda CONFIG REQUIRED)          # CMAKE_PREFIX_PATH=P
#   target_link_libraries(app PRIVATE Pagoda::pagoda_worker)
# The pagodad client (pagoda_client: gRPC, UCX, etcd) is not exported.
if(NOT TARGET pagoda_worker)
  return()
endif()
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(_pagoda_export pagoda_worker pagoda_kvstore pagoda_retriever pagoda_kernels_ref pagoda_warnings)
foreach(t pagoda_kernels_cuda pagoda_kvstore_gpu_tier)
  if(TARGET ${t})
    list(APPEND _pagoda_export ${t})
  endif()
endforeach()
# Their include directories are source paths; installed, every public header is under include/.
foreach(t ${_pagoda_export})
  get_target_property(_dirs ${t} INTERFACE_INCLUDE_DIRECTORIES)
  if(_dirs)
    list(TRANSFORM _dirs PREPEND "$<BUILD_INTERFACE:")
    list(TRANSFORM _dirs APPEND ">")
    set_property(TARGET ${t} PROPERTY INTERFACE_INCLUDE_DIRECTORIES
                 ${_dirs} "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>")
  endif()
endforeach()
install(TARGETS ${_pagoda_export} EXPORT PagodaTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY client/include/ kvstore/engine/include/ retriever/include/ kernels/include/
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
install(EXPORT PagodaTargets NAMESPACE Pagoda:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/Pagoda)
configure_package_config_file(cmake/PagodaConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/PagodaConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/Pagoda)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/PagodaConfig.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/Pagoda)

# A separate project finds the installed package and runs a worker (cmake/package_test/).
add_test(NAME pagoda_cmake_package_test
         COMMAND ${PROJECT_SOURCE_DIR}/cmake/package_test/run.sh ${CMAKE_BINARY_DIR})
set_tests_properties(pagoda_cmake_package_test PROPERTIES TIMEOUT 600)
