#!/usr/bin/env bash
# Build the fuzz corpus seeds (fuzz/corpus/<target>/) from the test vectors
# (tests/data/vectors, see their README), examples/access.conf and fuzz/seeds/.
# Run before fuzzing; the corpus is not committed. Usage: fuzz/seed.sh [VECTORS_DIR]
set -euo pipefail
cd "$(dirname "$0")"
vectors=${1:-../tests/data/vectors}
[ -d "$vectors" ] || { echo "seed.sh: no vectors at $vectors" >&2; exit 1; }

# column FILE NAME...: the named columns of a TSV (header row), separated by \037
# (not a tab: `read` would merge the tabs around an empty field).
column() {
    local file=$1
    shift
    awk -F'\t' -v want="$*" '
        NR == 1 { n = split(want, w, " "); for (i = 1; i <= NF; i++) col[$i] = i; next }
        $0 != "" { line = ""; for (j = 1; j <= n; j++) line = line (j > 1 ? "\037" : "") $(col[w[j]]); print line }
    ' "$file"
}

# seed TARGET NAME: stdin becomes one seed file.
seed() { cat > "corpus/$1/$2"; }

for t in packet_wire packet_sealed access_conf fwknopd_conf http_intake native_open; do
    mkdir -p "corpus/$t"
done

# Native packets: the datagrams of spa-native's vectors (hex in JSON), as bytes.
n=0
grep -o '"datagram_hex": "[0-9a-f]*"' ../spa-native/tests/data/vectors.json | cut -d'"' -f4 |
    while read -r hex; do
        n=$((n + 1))
        printf '%b' "$(printf '%s' "$hex" | sed 's/../\\x&/g')" | seed native_open "vector-$n"
    done

# Packets: every valid one (with its id) and every must-reject line.
for tsv in known-good generated mutation-base; do
    column "$vectors/$tsv.tsv" id packet | while IFS=$'\037' read -r id packet; do
        printf '%s' "$packet" | seed packet_wire "$id"
    done
done
n=0
while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    printf '%s' "$line" | seed packet_wire "reject-$n"
done < "$vectors/must-reject.txt"

# Plaintexts (encoded_data:digest) for the sealed target.
for tsv in generated mutation-base; do
    column "$vectors/$tsv.tsv" id encoded_data digest | while IFS=$'\037' read -r id data digest; do
        printf '%s:%s' "$data" "$digest" | seed packet_sealed "$id"
    done
done

# HTTP: the client's GET form of each valid packet, with and without a proxy header.
column "$vectors/generated.tsv" id packet | while IFS=$'\037' read -r id packet; do
    path=$(printf '%s' "$packet" | tr '+/' '-_')
    printf 'GET /%s HTTP/1.1\r\nUser-Agent: Fwknop/2.6.10\r\nAccept: */*\r\nHost: 192.0.2.1\r\nConnection: close\r\n\r\n' \
        "$path" | seed http_intake "$id"
    printf 'GET /%s HTTP/1.1\r\nUser-Agent: curl/8.0\r\nX-Forwarded-For: 192.0.2.77\r\nHost: 192.0.2.1\r\n\r\n' \
        "$path" | seed http_intake "$id-xff"
    printf '%s' "$packet" | seed http_intake "$id-udp"
done

# Config files: the committed seeds, the example, one stanza per vector key set.
cp seeds/access_conf/* corpus/access_conf/
cp ../examples/access.conf corpus/access_conf/example
for tsv in known-good generated; do
    column "$vectors/$tsv.tsv" id key key_encoding hmac_key hmac_key_encoding hmac_type enc_mode |
        while IFS=$'\037' read -r id key kenc hkey henc htype mode; do
            {
                printf 'SOURCE ANY\n'
                if [ "$kenc" = base64 ]; then printf 'KEY_BASE64 %s\n' "$key"; else printf 'KEY %s\n' "$key"; fi
                if [ -n "$hkey" ]; then
                    if [ "$henc" = base64 ]; then printf 'HMAC_KEY_BASE64 %s\n' "$hkey"; else printf 'HMAC_KEY %s\n' "$hkey"; fi
                    printf 'HMAC_DIGEST_TYPE %s\n' "$htype"
                fi
                printf 'ENCRYPTION_MODE %s\n' "$mode"
            } | seed access_conf "$id"
        done
done
cp seeds/fwknopd_conf/* corpus/fwknopd_conf/
# fwknop's own default file, when installed (not committed: it is fwknop's text).
if [ -r /etc/fwknop/fwknopd.conf ]; then
    cp /etc/fwknop/fwknopd.conf corpus/fwknopd_conf/debian-fwknopd.conf
fi

for t in corpus/*/; do
    echo "seed.sh: $(ls "$t" | wc -l) seeds in $t"
done
