#!/usr/bin/env bash
# Label a HATS catalogue of XP coefficients on a local Dask cluster, resumably (docs/scale.md):
# make the catalogue from a table (by default the 2,000 DR3 sources of ../shared/data, which
# have no positions: placed by their source_id), label it with the shipped model on two
# workers, flag it, and open the result with LSDB. Writes xp_cat/, labeled_cat/ and
# flagged_cat/ in the current folder.
#
#     examples/label_a_catalogue.sh [XP_COEFFICIENTS_FILE]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
input="${1:-$here/../../shared/data/xp_continuous/xp_continuous_2000.fits}"
xptools hats-import "$input" --positions-from-source-id --max-rows 500 -o xp_cat --overwrite
# killed half way? the same line again skips the partitions already written
xptools infer xp_cat -o labeled_cat --workers 2 --overwrite --quiet
xptools flag labeled_cat -o flagged_cat --workers 2 --overwrite --quiet
python -c "
import lsdb
cat = lsdb.open_catalog('flagged_cat', columns=['source_id', 'teff', 'logg', 'fe_h', 'xp_flag'])
t = cat.compute()
print(f'{len(t)} stars in {cat.npartitions} partitions; {(t.xp_flag < 64).sum()} pass xp_flag < 64')
print(t.head())
"
