#!/usr/bin/env bash
# Checks that every C, header and CUDA file of the tree is formatted as
# .clang-format says (clang-format 14, Debian 12's). With --fix, formats them.
set -euo pipefail
cd "$(dirname "$0")/.."
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files 'src/*.c' 'src/*.h' 'src/*.cu' 'src/*.cuh' 'tools/*.c' 'tools/*.h' \
        'tests/*.c' 'tests/*.h' 'tests/*.cu')
else # an unpacked release tarball: the same files, found on disk
    mapfile -t files < <(find src tools tests -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) |
        sort)
fi
if [ "${1:-}" = --fix ]; then
    clang-format -i "${files[@]}"
    exit 0
fi
if ! clang-format --dry-run -Werror "${files[@]}" 2>/tmp/lacuna-format.$$; then
    head -n 40 /tmp/lacuna-format.$$
    rm -f /tmp/lacuna-format.$$
    echo "check_format: files above differ from .clang-format; run scripts/check_format.sh --fix" >&2
    exit 1
fi
rm -f /tmp/lacuna-format.$$
echo "==> formatting: ${#files[@]} files match .clang-format"
