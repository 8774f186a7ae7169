#!/bin/bash
# new, base, new, base: paired readings of the gateway/nginx ratio per build.
cd /work/wt/gwperf
R=bench/results/2026-12-07-s13-gwperf
for i in 1 2; do
  for b in new base; do
    bin=/var/tmp/rel13-gwperf/edgemesh-s3; [[ $b == base ]] && bin=/var/tmp/rel13-gwperf/edgemesh-base
    SHARED_BENCH=/work/shared/bench EDGEMESH_BIN=$bin bash bench/gateway.sh -o $R/gateway-$b-$i > /tmp/gw-wall-$b-$i.log 2>&1
    echo "$b $i rc=$?" >> /tmp/gw-wall.status
  done
done
