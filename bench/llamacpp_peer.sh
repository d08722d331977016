# Shared by bench/vs_llamacpp.sh and bench/vs_llamacpp_load.sh (sourced, not
# run): fetch llama.cpp's source from the llama-cpp-python sdist on PyPI (pip
# download; the only network use) into peers/llama.cpp (git-ignored) and build
# the named targets into peers/llama.cpp/build (CPU only, this CPU's ISA).
#
#   llamacpp_build_peer TOP VERSION TARGET...   e.g. llama-bench llama-server

llamacpp_build_peer() {
  local top=$1 ver=$2
  shift 2
  local peer=$top/peers/llama.cpp
  mkdir -p "$top/peers/dl"
  if [ ! -f "$peer/CMakeLists.txt" ]; then
    pip download --no-deps --no-binary :all: --no-build-isolation "llama-cpp-python==$ver" -d "$top/peers/dl" ||
      pip download --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$top/peers/dl"
    tar -xzf "$top/peers/dl/llama_cpp_python-$ver.tar.gz" -C "$top/peers/dl"
    rm -rf "$peer"
    mv "$top/peers/dl/llama_cpp_python-$ver/vendor/llama.cpp" "$peer"
  fi
  # The ISA flags of this CPU, named one by one rather than GGML_NATIVE: -march=native
  # also turns on AMX where the CPU lists it, and virtual machines that list AMX
  # without enabling it kill llama-bench with SIGILL.
  local isa=() f
  for f in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx_vnni:AVX_VNNI avx512f:AVX512 avx512vbmi:AVX512_VBMI \
           avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    if grep -qw "${f%%:*}" /proc/cpuinfo; then isa+=("-DGGML_${f##*:}=ON"); else isa+=("-DGGML_${f##*:}=OFF"); fi
  done
  # The server is built without its web UI (which npm-builds or downloads
  # assets) and without OpenSSL: the benchmark speaks plain HTTP on loopback.
  cmake -S "$peer" -B "$peer/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF "${isa[@]}" -DGGML_CUDA=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$peer/build" --target "$@" -j 2
}
