#!/usr/bin/env bash
# Build, install and test the kerasopt R package.
#
#   bash r/run-tests.sh [PYTHON]          install R if missing, then run the R tests
#   bash r/run-tests.sh --install-only    only install R, reticulate and testthat if missing
#
# PYTHON is the interpreter with kerasopt installed (default: .venv/bin/python in
# the repository root); reticulate uses it through RETICULATE_PYTHON.
# R, reticulate and testthat come from Debian's packages (r-base-core,
# r-cran-reticulate, r-cran-testthat), installed with apt-get when missing; that
# needs root (or password-less sudo). The package is installed into a temporary
# library, so nothing outside the temporary directory is changed. Exits non-zero
# when anything fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

install_only=0
if [[ "${1:-}" == "--install-only" ]]; then
  install_only=1
  shift
fi
python="${1:-$repo/.venv/bin/python}"

r_ready() {
  command -v Rscript >/dev/null 2>&1 &&
    Rscript -e 'for (p in c("reticulate", "testthat")) if (!requireNamespace(p, quietly = TRUE)) quit(status = 1)' \
      >/dev/null 2>&1
}

if ! r_ready; then
  echo "== installing R, reticulate and testthat (Debian packages)"
  sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo)
    else
      echo "error: R, reticulate or testthat is missing, and installing them needs root:" >&2
      echo "  apt-get install -y r-base-core r-cran-reticulate r-cran-testthat" >&2
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: R, reticulate or testthat is missing and apt-get is not available;" >&2
    echo "  install R (>= 4.1) with the R packages reticulate and testthat." >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    r-base-core r-cran-reticulate r-cran-testthat >/dev/null
  r_ready || { echo "error: R packages still missing after apt-get" >&2; exit 1; }
fi
echo "== $(R --version | head -n 1)"

if [[ "$install_only" == 1 ]]; then
  exit 0
fi

if [[ "$python" != /* ]]; then
  python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
fi
if ! "$python" -c 'import kerasopt' >/dev/null 2>&1; then
  echo "error: '$python' cannot import kerasopt; pass the Python of an environment" >&2
  echo "  where kerasopt is installed: bash r/run-tests.sh /path/to/python" >&2
  exit 1
fi
echo "== Python: $python"
# A Python without kerasopt, for the test of the message R users get then: the interpreter
# this environment was made from (empty when that one has kerasopt too; the test then fails).
bare="$("$python" -c 'import sys; print(getattr(sys, "_base_executable", ""))')"
if [[ -n "$bare" ]] && "$bare" -c 'import kerasopt' >/dev/null 2>&1; then bare=""; fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lib"

echo "== R CMD INSTALL kerasopt"
if ! R CMD INSTALL --no-multiarch --library="$tmp/lib" "$here/kerasopt" >"$tmp/install.log" 2>&1; then
  cat "$tmp/install.log"
  echo "error: R CMD INSTALL failed" >&2
  exit 1
fi

echo "== testthat"
cd "$tmp"
RETICULATE_PYTHON="$python" \
RETICULATE_MINICONDA_ENABLED=FALSE \
R_LIBS="$tmp/lib${R_LIBS:+:$R_LIBS}" \
KERASOPT_R_TESTS="$here/kerasopt/tests/testthat" \
KERASOPT_R_BARE_PYTHON="$bare" \
  Rscript -e '
    library(testthat)
    options(cli.dynamic = FALSE, cli.num_colors = 1)
    results <- test_dir(Sys.getenv("KERASOPT_R_TESTS"), package = "kerasopt",
                        load_package = "installed", stop_on_failure = FALSE,
                        reporter = ProgressReporter$new(show_praise = FALSE,
                                                        update_interval = Inf))
    df <- as.data.frame(results)
    failed <- sum(df$failed) + sum(df$error)
    cat(sprintf("R tests: %d expectations passed, %d failed, %d skipped, %d warnings\n",
                sum(df$passed), failed, sum(df$skipped), sum(df$warning)))
    if (failed > 0 || sum(df$skipped) > 0) quit(status = 1)
  '
