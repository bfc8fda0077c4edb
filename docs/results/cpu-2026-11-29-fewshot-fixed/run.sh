cd /work/main
for v in perq fixed perq fixed; do
  s=$(date +%s.%N)
  /tmp/sci/amortize-fixed compare --task subj --config /tmp/sci/fs/$v.toml --methods fewshot --limit 10 --samples 10 --out /tmp/sci/fs/out-$v --json > /tmp/sci/fs/$v.json 2>/tmp/sci/fs/$v.err
  e=$(date +%s.%N)
  echo "$v $(echo "$e - $s" | bc)" >> /tmp/sci/fs/times.txt
done
