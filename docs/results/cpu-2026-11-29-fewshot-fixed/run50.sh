cd /work/main
for v in perq50 fixed50; do
  s=$(date +%s.%N)
  /usr/bin/time -f "%M KB" /tmp/sci/amortize-fixed compare --task subj --config /tmp/sci/fs/$v.toml --methods fewshot --limit 6 --samples 10 --out /tmp/sci/fs/out-$v --json > /tmp/sci/fs/$v.json 2>/tmp/sci/fs/$v.err
  e=$(date +%s.%N)
  echo "$v $(echo "$e - $s" | bc) $(tail -1 /tmp/sci/fs/$v.err)" >> /tmp/sci/fs/times50.txt
done
