#!/bin/bash
cd /work/wt/gwperf
R=bench/results/2026-12-07-s13-gwperf
for b in new base; do
  bin=/var/tmp/rel13-gwperf/edgemesh-s3; [[ $b == base ]] && bin=/var/tmp/rel13-gwperf/edgemesh-base
  SHARED_BENCH=/work/shared/bench EDGEMESH_BIN=$bin bash bench/gateway.sh -H -2 -o $R/gateway-all-$b > /tmp/gw-all-$b.log 2>&1
  echo "$b rc=$?" >> /tmp/gw-wall2.status
done
