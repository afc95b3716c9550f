#!/usr/bin/env python3
"""Writes grafana-dashboards/*.json from the panel lists below.

The JSON files are committed and are what Grafana provisions; this script is
how they are kept consistent (one datasource variable, the same job/instance
variables, units, descriptions and $__rate_interval everywhere). Edit the
lists here, run `python3 scripts/gen_dashboards.py`, and commit both.
tests/it/dashboards.rs checks the JSON and runs every query against a real
Prometheus scraping the real daemon; it also fails when the files differ
from this script's output.
"""

import json
import os
import sys

DATASOURCE_UID = "inferwatch-prometheus"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", cluster=~"$cluster", instance=~"$instance"'
GPU = SEL + ', gpu=~"$gpu"'
RI = "$__rate_interval"

UP_DOWN = [
    {"type": "value", "options": {"0": {"text": "Down", "color": "red"}, "1": {"text": "Up", "color": "green"}}}
]
LOADED_FAILED = [
    {"type": "value", "options": {"0": {"text": "Failed", "color": "red"}, "1": {"text": "Loaded", "color": "green"}}}
]


def panel(kind, title, description, unit, targets, w, h, **extra):
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
             **({"instant": True, "format": "table"} if kind == "table" else {})}
            for i, (expr, legend) in enumerate(targets)
        ],
        "_size": (w, h),
    }
    d = p["fieldConfig"]["defaults"]
    if "mappings" in extra:
        d["mappings"] = extra.pop("mappings")
    if "thresholds" in extra:
        d["thresholds"] = {"mode": "absolute", "steps": extra.pop("thresholds")}
    if "min" in extra:
        d["min"] = extra.pop("min")
    if "max" in extra:
        d["max"] = extra.pop("max")
    p.update(extra)
    return p


def stat(title, description, unit, expr, legend="", w=4, **kw):
    kw.setdefault("options", {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "area"})
    return panel("stat", title, description, unit, [(expr, legend)], w, 4, **kw)


def ts(title, description, unit, *targets, w=12, **kw):
    kw.setdefault("options", {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                              "tooltip": {"mode": "multi", "sort": "desc"}})
    return panel("timeseries", title, description, unit, list(targets), w, 8, **kw)


def table(title, description, unit, expr, w=24):
    return panel("table", title, description, unit, [(expr, "")], w, 6)


def merged_table(title, description, unit, columns, w=24, h=8):
    """One row per instance from several instant queries (Grafana's merge
    transformation joins them on their labels); columns are (expr, name)."""
    p = panel("table", title, description, unit, [(expr, "") for expr, _ in columns], w, h)
    renames = {f"Value #{chr(ord('A') + i)}": name for i, (_, name) in enumerate(columns)}
    p["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "job": True},
                                       "renameByName": renames}},
    ]
    return p


def row(title):
    """A section header across the dashboard (expanded: the panels after it
    stay at the top level)."""
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def threshold(*pairs):
    return [{"color": c, "value": v} for v, c in pairs]


def variables(extra, instance_label="Instance"):
    v = [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
         "current": {"text": "Prometheus", "value": DATASOURCE_UID}, "hide": 0, "refresh": 1, "regex": ""},
        query_var("job", "Job", "label_values(inferwatch_build_info, job)", multi=False),
        # The label monitoring/targets/*.yml gives a group of nodes; All
        # (.*) also matches nodes without one.
        query_var("cluster", "Cluster", 'label_values(inferwatch_build_info{job=~"$job"}, cluster)'),
        query_var("instance", instance_label,
                  'label_values(inferwatch_build_info{job=~"$job", cluster=~"$cluster"}, instance)'),
    ]
    return v + extra


def query_var(name, label, q, multi=True):
    return {
        "type": "query", "name": name, "label": label, "datasource": DS,
        "definition": q, "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi,
        **({"allValue": ".*", "current": {"text": "All", "value": "$__all"}} if multi else {"current": {}}),
        "hide": 0, "regex": "",
    }


def layout(panels):
    """Flows panels left to right in rows 24 units wide."""
    x = y = row_h = 0
    for i, p in enumerate(panels):
        w, h = p.pop("_size")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = i + 1
        x += w
        row_h = max(row_h, h)
    return panels


def dashboard(uid, title, description, panels, extra_vars=(), links=(), instance_label="Instance"):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["inferwatch"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [*links, {"type": "dashboards", "tags": ["inferwatch"], "asDropdown": True, "title": "inferwatch",
                             "includeVars": True, "keepTime": True}],
        "templating": {"list": variables(list(extra_vars), instance_label)},
        "panels": layout(panels),
    }


overview = dashboard(
    "inferwatch-overview", "inferwatch / Overview",
    "One screen for the GPU box: daemon, GPUs, services, queues and pipeline throughput.",
    [
        stat("inferwatch up", "1 when Prometheus scraped the daemon at the last scrape (up).", "none",
             f"up{{{SEL}}}", "{{instance}}", mappings=UP_DOWN, thresholds=threshold((None, "red"), (1, "green")), w=3),
        stat("GPUs", "GPUs that answered the last NVML poll (gpu_devices), summed over the selected instances.", "none",
             f"sum(gpu_devices{{{SEL}}})", w=3),
        stat("Average GPU utilisation", "Mean fraction of time a kernel ran, over all selected GPUs.", "percentunit",
             f"avg(gpu_utilization_ratio{{{SEL}}})", thresholds=threshold((None, "green"), (0.8, "orange"), (0.95, "red"))),
        stat("Real utilisation", "Mean SM active over the GPUs with GPM (gpu_sm_active_ratio): how much of the GPU "
             "the kernels kept busy, which utilisation does not say. See the GPU efficiency dashboard.", "percentunit",
             f"avg(gpu_sm_active_ratio{{{SEL}}})", thresholds=threshold((None, "blue"), (0.5, "green"))),
        stat("Hottest GPU", "Highest core temperature among the selected GPUs; GpuTemperatureHigh fires above 85 °C "
             "on GPUs without a reported slowdown threshold, GpuNearSlowdownTemperature within 5 °C of it.",
             "celsius", f"max(gpu_temperature_celsius{{{SEL}}})",
             thresholds=threshold((None, "green"), (75, "orange"), (85, "red"))),
        stat("Services down", "Monitored services whose last health check failed (service_up == 0).", "none",
             f"sum(service_up{{{SEL}}} == bool 0)", thresholds=threshold((None, "green"), (1, "red")), w=3),
        stat("Jobs in DLQs", "Jobs that failed all retries, over every dead-letter queue.", "none",
             f"sum(dlq_depth{{{SEL}}})", thresholds=threshold((None, "green"), (1, "orange")), w=3),
        ts("GPU utilisation", "Fraction of time a kernel ran, per GPU (gpu_utilization_ratio).", "percentunit",
           (f"gpu_utilization_ratio{{{SEL}}}", "{{instance}} GPU {{gpu}}"), min=0, max=1),
        ts("GPU temperature", "Core temperature per GPU (gpu_temperature_celsius).", "celsius",
           (f"gpu_temperature_celsius{{{SEL}}}", "{{instance}} GPU {{gpu}}")),
        ts("Queue depth", "Jobs waiting per queue (job_queue_depth) and in its DLQ (dlq_depth).", "short",
           (f"job_queue_depth{{{SEL}}}", "{{queue}}"), (f"dlq_depth{{{SEL}}}", "dlq:{{queue}}")),
        ts("Pipeline throughput", "Items processed per second (inference FPS) and finished jobs per second by status.",
           "ops", (f"sum by (instance) (rate(pipeline_items_processed_total{{{SEL}}}[{RI}]))", "{{instance}} items/s"),
           (f"sum by (instance, status) (rate(pipeline_jobs_total{{{SEL}}}[{RI}]))", "{{instance}} jobs {{status}}/s")),
        ts("Service health", "1 while a service's last health check passed (service_up).", "none",
           (f"service_up{{{SEL}}}", "{{service}}"), mappings=UP_DOWN, min=0, max=1),
        ts("Firing alerts", "Alerts Prometheus has firing now, by severity (the Watchdog counts as info).", "none",
           ('sum by (severity) (ALERTS{alertstate="firing"})', "{{severity}}")),
    ],
)

gpu = dashboard(
    "inferwatch-gpu", "inferwatch / GPU",
    "Every NVML reading per GPU: load, memory, thermals, power, clocks, video engines and errors.",
    [
        table("GPUs", "Identity of each GPU (gpu_info): name, UUID, PCI bus id and driver version.", "none",
              f"gpu_info{{{GPU}}}"),
        ts("NVML and kernel log", "1 while NVML answers (inferwatch_nvml_up; 0 while it is down, GpuDriverDown) "
           "and while the kernel log is read for XIDs (inferwatch_kernel_log_up).", "none",
           (f"inferwatch_nvml_up{{{SEL}}}", "{{instance}} NVML"),
           (f"inferwatch_kernel_log_up{{{SEL}}}", "{{instance}} kernel log"), mappings=UP_DOWN, min=0, max=1),
        ts("Recovery action", "What the driver says each GPU needs (gpu_recovery_action == 1, NVML field 230): "
           "none, gpu_reset, node_reboot, drain_p2p, drain_and_reset; GpuNeedsRecovery fires on anything but none.",
           "none", (f"gpu_recovery_action{{{GPU}}} == 1", "{{instance}} GPU {{gpu}} {{action}}")),
        ts("Utilisation", "Fraction of time a kernel ran (gpu_utilization_ratio).", "percentunit",
           (f"gpu_utilization_ratio{{{GPU}}}", "{{instance}} GPU {{gpu}}"), min=0, max=1),
        ts("Memory controller utilisation", "Fraction of time device memory was read or written "
           "(gpu_memory_utilization_ratio).", "percentunit",
           (f"gpu_memory_utilization_ratio{{{GPU}}}", "{{instance}} GPU {{gpu}}"), min=0, max=1),
        ts("Memory used", "Device memory in use and in total (gpu_memory_used_bytes, gpu_memory_total_bytes).", "bytes",
           (f"gpu_memory_used_bytes{{{GPU}}}", "{{instance}} GPU {{gpu}} used"),
           (f"gpu_memory_total_bytes{{{GPU}}}", "{{instance}} GPU {{gpu}} total")),
        ts("Memory used (share)", "Used over total device memory.", "percentunit",
           (f"gpu_memory_used_bytes{{{GPU}}} / gpu_memory_total_bytes{{{GPU}}}", "{{instance}} GPU {{gpu}}"),
           min=0, max=1),
        ts("Temperature", "Core temperature (gpu_temperature_celsius); GpuNearSlowdownTemperature fires within 5 °C "
           "of the card's slowdown threshold (85 °C where it reports none).", "celsius",
           (f"gpu_temperature_celsius{{{GPU}}}", "{{instance}} GPU {{gpu}}")),
        ts("Fan speed", "Intended speed of each fan as a fraction of maximum (gpu_fan_speed_ratio, one series per fan); absent on passively "
           "cooled GPUs.", "percentunit", (f"gpu_fan_speed_ratio{{{GPU}}}", "{{instance}} GPU {{gpu}} fan {{fan}}"), min=0, max=1),
        ts("Power", "Power draw and the enforced limit (gpu_power_usage_watts, gpu_power_limit_watts).", "watt",
           (f"gpu_power_usage_watts{{{GPU}}}", "{{instance}} GPU {{gpu}} draw"),
           (f"gpu_power_limit_watts{{{GPU}}}", "{{instance}} GPU {{gpu}} limit")),
        ts("Energy rate", "Average power from the energy counter (rate of gpu_energy_joules_total); smoother than "
           "the sampled draw.", "watt",
           (f"rate(gpu_energy_joules_total{{{GPU}}}[{RI}])", "{{instance}} GPU {{gpu}}")),
        ts("Clocks", "Graphics, SM and memory clocks (gpu_clock_hz).", "hertz",
           (f"gpu_clock_hz{{{GPU}}}", "{{instance}} GPU {{gpu}} {{clock}}")),
        ts("Video engines", "Encoder and decoder utilisation (gpu_encoder_utilization_ratio, "
           "gpu_decoder_utilization_ratio).", "percentunit",
           (f"gpu_encoder_utilization_ratio{{{GPU}}}", "{{instance}} GPU {{gpu}} encoder"),
           (f"gpu_decoder_utilization_ratio{{{GPU}}}", "{{instance}} GPU {{gpu}} decoder"), min=0, max=1),
        ts("Active throttle reasons", "Clock throttle reasons currently active (gpu_throttle_reason_active == 1); "
           "hw_thermal_slowdown or hw_slowdown means the GPU protects itself.", "none",
           (f"gpu_throttle_reason_active{{{GPU}}} == 1", "{{instance}} GPU {{gpu}} {{reason}}")),
        ts("ECC errors", "ECC errors per second since the driver loaded, corrected and uncorrected "
           "(rate of gpu_ecc_errors_total); any uncorrected error pages.", "short",
           (f"rate(gpu_ecc_errors_total{{{GPU}}}[{RI}])", "{{instance}} GPU {{gpu}} {{type}}")),
        ts("XID errors", "XIDs counted since the daemon started, from NVML events and the kernel log, each once "
           "(gpu_xid_errors_total); series exist only for XIDs that happened.", "short",
           (f"gpu_xid_errors_total{{{GPU}}}", "{{instance}} GPU {{gpu}} XID {{xid}}")),
        table("Last XIDs", "Seconds since each XID was last counted, with the XID catalog's severity and action "
              "(time() - gpu_xid_last_seen_timestamp_seconds); critical ones page (GpuXidCritical).", "s",
              f"time() - gpu_xid_last_seen_timestamp_seconds{{{GPU}}}"),
        ts("GPU memory by service", "Device memory each service's compute processes hold, stacked per GPU "
           "(gpu_service_memory_used_bytes; unattributed: processes no health.services[].match names), and the "
           "used memory no running process accounts for (gpu_unattributed_memory_bytes: dead or foreign contexts). "
           "ServiceGpuMemoryGrowing and GpuMemoryUnattributed watch them; needs gpu.per_process: true.", "bytes",
           (f"gpu_service_memory_used_bytes{{{GPU}}}", "{{instance}} GPU {{gpu}} {{service}}"),
           (f"gpu_unattributed_memory_bytes{{{GPU}}}", "{{instance}} GPU {{gpu}} held by no process"), w=24,
           fieldConfig={"defaults": {"unit": "bytes", "custom": {"stacking": {"mode": "normal", "group": "A"},
                                                               "fillOpacity": 30}}, "overrides": []}),
        table("GPU processes", "Each compute process with who holds it: the matched service, the systemd unit, the "
              "container and its compose service (gpu_process_memory_used_bytes); past gpu.per_process_max the "
              "smallest are summed into _other.", "bytes",
              f"gpu_process_memory_used_bytes{{{GPU}}}"),
    ],
    [query_var("gpu", "GPU", 'label_values(gpu_info{job=~"$job", instance=~"$instance"}, gpu)')],
    [{"type": "link", "title": "GPU efficiency", "url": "/d/inferwatch-gpu-efficiency", "icon": "dashboard",
      "tooltip": "SM active and occupancy, tensor and DRAM use, throttle time, memory health",
      "includeVars": True, "keepTime": True, "asDropdown": False, "targetBlank": False, "tags": []}],
)

PER_GPU = "{{instance}} GPU {{gpu}}"

efficiency = dashboard(
    "inferwatch-gpu-efficiency", "inferwatch / GPU efficiency",
    "What utilisation hides: GPM profiling counters (Hopper and newer, read from NVML without DCGM), per-process SM "
    "use, time spent throttled, and memory and PCIe health.",
    [
        stat("Real utilisation", "Mean SM active (gpu_sm_active_ratio) over the selected GPUs: utilisation says a "
             "kernel ran, this says how much of the GPU it kept busy.", "percentunit",
             f"avg(gpu_sm_active_ratio{{{GPU}}})", w=6, thresholds=threshold((None, "blue"), (0.5, "green"))),
        stat("Tensor active", "Mean share of time any tensor pipe was active (gpu_tensor_active_ratio); near 0 on a "
             "busy GPU means a model without tensor cores (GpuLowTensorUse).", "percentunit",
             f"avg(gpu_tensor_active_ratio{{{GPU}}})", w=6, thresholds=threshold((None, "orange"), (0.05, "green"))),
        stat("DRAM bandwidth", "Mean share of peak DRAM bandwidth used (gpu_dram_active_ratio); high with low SM "
             "active means memory-bound.", "percentunit", f"avg(gpu_dram_active_ratio{{{GPU}}})", w=6),
        stat("Time throttled", "Share of the last interval the clocks were held down for any tracked reason, on the "
             "most throttled GPU (rate of gpu_clock_event_seconds_total).", "percentunit",
             f"max(sum by (instance, gpu) (rate(gpu_clock_event_seconds_total{{{GPU}}}[{RI}])))", w=6,
             thresholds=threshold((None, "green"), (0.1, "orange"), (0.5, "red"))),
        ts("SM active vs occupancy", "SM active: share of time an SM had a warp (gpu_sm_active_ratio); occupancy: "
           "resident warps against the maximum (gpu_sm_occupancy_ratio). High active with low occupancy is a kernel "
           "that keeps every SM busy with few warps.", "percentunit",
           (f"gpu_sm_active_ratio{{{GPU}}}", PER_GPU + " SM active"),
           (f"gpu_sm_occupancy_ratio{{{GPU}}}", PER_GPU + " occupancy"), min=0, max=1),
        ts("Tensor active", "Share of time any tensor pipe was active (gpu_tensor_active_ratio), against the "
           "graphics engine (gpu_graphics_engine_active_ratio).", "percentunit",
           (f"gpu_tensor_active_ratio{{{GPU}}}", PER_GPU + " tensor"),
           (f"gpu_graphics_engine_active_ratio{{{GPU}}}", PER_GPU + " engine"), min=0, max=1),
        ts("DRAM active", "Share of peak DRAM bandwidth used (gpu_dram_active_ratio).", "percentunit",
           (f"gpu_dram_active_ratio{{{GPU}}}", PER_GPU), min=0, max=1),
        ts("Pipe mix", "Share of time each pipe was active (gpu_pipe_active_ratio): fp16, fp32, fp64, integer and the "
           "HMMA / IMMA / DFMA tensor pipes.", "percentunit",
           (f"gpu_pipe_active_ratio{{{GPU}}}", PER_GPU + " {{pipe}}"), min=0, max=1),
        ts("PCIe / NVLink throughput", "Bytes per second over PCIe and, on GPUs with NVLink, over all NVLinks "
           "(gpu_pcie_throughput_bytes_per_second, gpu_nvlink_throughput_bytes_per_second), tx and rx.", "Bps",
           (f'label_replace(gpu_pcie_throughput_bytes_per_second{{{GPU}}}, "bus", "PCIe", "", "") or '
            f'label_replace(gpu_nvlink_throughput_bytes_per_second{{{GPU}}}, "bus", "NVLink", "", "")',
            PER_GPU + " {{bus}} {{direction}}")),
        ts("Throttle time per reason", "Share of time the clocks were held down, per reason (rate of "
           "gpu_clock_event_seconds_total): power cap, sync boost, thermal and power-brake slowdowns.", "percentunit",
           (f"rate(gpu_clock_event_seconds_total{{{GPU}}}[{RI}])", PER_GPU + " {{reason}}"), min=0, max=1),
        ts("Memory temperature against its limit", "HBM temperature (gpu_memory_temperature_celsius) and the "
           "card's memory limit (gpu_temperature_threshold_celsius{threshold=\"memory_max\"}).", "celsius",
           (f"gpu_memory_temperature_celsius{{{GPU}}}", PER_GPU + " memory"),
           (f'gpu_temperature_threshold_celsius{{{GPU}, threshold="memory_max"}}', PER_GPU + " limit")),
        ts("Core temperature against slowdown", "Core temperature (gpu_temperature_celsius) and the card's slowdown "
           "threshold; GpuNearSlowdownTemperature fires within 5 °C of it.", "celsius",
           (f"gpu_temperature_celsius{{{GPU}}}", PER_GPU + " core"),
           (f'gpu_temperature_threshold_celsius{{{GPU}, threshold="slowdown"}}', PER_GPU + " slowdown")),
        ts("Remapped rows", "Memory rows remapped per error type (gpu_remapped_rows), and the pending / failed flags "
           "(gpu_remapped_rows_pending: reset needed; gpu_remapped_rows_failed: replace the card).", "short",
           (f"gpu_remapped_rows{{{GPU}}}", PER_GPU + " {{type}}"),
           (f"gpu_remapped_rows_pending{{{GPU}}}", PER_GPU + " pending"),
           (f"gpu_remapped_rows_failed{{{GPU}}}", PER_GPU + " failed")),
        ts("PCIe link", "Current PCIe generation and width (gpu_pcie_link_generation, gpu_pcie_link_width) and "
           "replays per second (rate of gpu_pcie_replay_total); GpuPcieLinkDegraded fires when the link trains down.",
           "short",
           (f"gpu_pcie_link_generation{{{GPU}}}", PER_GPU + " gen"),
           (f"gpu_pcie_link_width{{{GPU}}}", PER_GPU + " width"),
           (f"rate(gpu_pcie_replay_total{{{GPU}}}[{RI}])", PER_GPU + " replays/s")),
        table("SM use per process", "SM and memory utilisation of each compute process in its latest driver sample "
              "(gpu_process_sm_utilization_ratio); needs gpu.per_process: true.", "percentunit",
              f"gpu_process_sm_utilization_ratio{{{GPU}}}"),
    ],
    [query_var("gpu", "GPU", 'label_values(gpu_info{job=~"$job", instance=~"$instance"}, gpu)')],
    [{"type": "link", "title": "GPU", "url": "/d/inferwatch-gpu", "icon": "dashboard",
      "tooltip": "Every NVML reading per GPU", "includeVars": True, "keepTime": True, "asDropdown": False,
      "targetBlank": False, "tags": []}],
)

services = dashboard(
    "inferwatch-services", "inferwatch / Services & DLQ",
    "Health checks and automatic restarts of the AI services, Redis and PostgreSQL; job queues and dead-letter "
    "queues; the daemon's own collectors.",
    [
        stat("Service up", "1 while the service is healthy (service_up).", "none",
             f'service_up{{{SEL}, service=~"$service"}}', "{{service}}", mappings=UP_DOWN,
             thresholds=threshold((None, "red"), (1, "green")), w=24),
        ts("Service status", "The service's state: healthy, unhealthy, restarting, restart_failed or failed "
           "(service_status == 1).", "none",
           (f'service_status{{{SEL}, service=~"$service"}} == 1', "{{service}}: {{status}}")),
        ts("Ready, starting, stalled", "Ready to serve (service_ready: Open Inference readiness, or the last "
           "check), in the start period (service_starting: failures do not count yet), and stalled (service_stalled: "
           "work pending, no progress for stall_after).", "short",
           (f'service_ready{{{SEL}, service=~"$service"}}', "{{service}} ready"),
           (f'service_starting{{{SEL}, service=~"$service"}}', "{{service}} starting"),
           (f'service_stalled{{{SEL}, service=~"$service"}}', "{{service}} stalled")),
        ts("Models ready", "Each Open Inference model's readiness (inference_model_ready).", "short",
           (f'inference_model_ready{{{SEL}, service=~"$service"}}', "{{service}}/{{model}}")),
        ts("Failed checks by reason", "Failed health checks per second by reason, under the failure threshold too "
           "(rate of service_check_failures_total).", "ops",
           (f'sum by (instance, service, reason) (rate(service_check_failures_total{{{SEL}, service=~"$service"}}[{RI}])) > 0',
            "{{service}} {{reason}}")),
        ts("Health check latency (p95)", "95th percentile of health check duration "
           "(service_health_check_duration_seconds).", "s",
           (f'histogram_quantile(0.95, sum by (instance, service, le) (rate(service_health_check_duration_seconds_bucket'
            f'{{{SEL}, service=~"$service"}}[{RI}])))', "{{service}}")),
        ts("Consecutive failed checks", "Checks failed in a row (service_consecutive_failures) and restart attempts "
           "used (service_restart_attempt).", "short",
           (f'service_consecutive_failures{{{SEL}, service=~"$service"}}', "{{service}} failures"),
           (f'service_restart_attempt{{{SEL}, service=~"$service"}}', "{{service}} restart attempt")),
        ts("Restarts", "Automatic restarts per second by result (rate of service_restarts_total).", "ops",
           (f'sum by (instance, service, result) (rate(service_restarts_total{{{SEL}, service=~"$service"}}[{RI}]))',
            "{{service}} {{result}}")),
        ts("Queue depth", "Jobs waiting per queue (job_queue_depth).", "short",
           (f'job_queue_depth{{{SEL}, queue=~"$queue"}}', "{{queue}}")),
        ts("How long jobs wait", "Age of the job at each queue's consumer end (job_queue_oldest_age_seconds: from its "
           "enqueued_at, created_at or timestamp field, else from when inferwatch first saw it, a lower bound within "
           "one poll) against its queues.max_wait (job_queue_max_wait_seconds); QueueWaitTooLong fires above it.", "s",
           (f'job_queue_oldest_age_seconds{{{SEL}, queue=~"$queue"}}', "{{queue}} waited"),
           (f'job_queue_max_wait_seconds{{{SEL}, queue=~"$queue"}}', "{{queue}} max wait")),
        ts("Stream consumer lag", "Entries of each watched Redis stream not yet delivered to the consumer group "
           "(redis_stream_group_lag) and delivered but not acknowledged (redis_stream_group_pending); "
           "StreamConsumerLagging fires on a backlog that grows for 10 minutes.", "short",
           (f"redis_stream_group_lag{{{SEL}}}", "{{stream}} / {{group}} lag"),
           (f"redis_stream_group_pending{{{SEL}}}", "{{stream}} / {{group}} pending")),
        ts("Jobs in flight", "Jobs in each queue's processing list (job_queue_active) and those stuck there longer "
           "than queues.processing_stuck_after (job_queue_stuck); empty without queues.processing_suffix.", "short",
           (f'job_queue_active{{{SEL}, queue=~"$queue"}}', "{{queue}} active"),
           (f'job_queue_stuck{{{SEL}, queue=~"$queue"}}', "{{queue}} stuck")),
        ts("DLQ depth", "Jobs in each dead-letter queue (dlq_depth); DlqNotEmpty fires on any.", "short",
           (f'dlq_depth{{{SEL}, queue=~"$queue"}}', "dlq:{{queue}}")),
        ts("Oldest DLQ job", "Age of the oldest job in each DLQ, from its first failure (dlq_oldest_job_age_seconds).",
           "s", (f'dlq_oldest_job_age_seconds{{{SEL}, queue=~"$queue"}}', "dlq:{{queue}}")),
        ts("DLQ operations", "Jobs per second requeued, cleared into archives and restored through the DLQ API.",
           "ops",
           (f'sum by (instance, queue) (rate(dlq_jobs_requeued_total{{{SEL}, queue=~"$queue"}}[{RI}]))',
            "{{queue}} requeued"),
           (f'sum by (instance, queue) (rate(dlq_jobs_cleared_total{{{SEL}, queue=~"$queue"}}[{RI}]))',
            "{{queue}} cleared"),
           (f'sum by (instance, queue) (rate(dlq_jobs_restored_total{{{SEL}, queue=~"$queue"}}[{RI}]))',
            "{{queue}} restored")),
        ts("Collectors", "1 when the collector's last round succeeded (inferwatch_collector_success).", "none",
           (f"inferwatch_collector_success{{{SEL}}}", "{{instance}} {{collector}}"), mappings=UP_DOWN, min=0, max=1),
        ts("Time since last collection", "Seconds since each collector last succeeded; the stale alert fires past "
           "3 poll intervals.", "s",
           (f"time() - inferwatch_collector_last_success_timestamp_seconds{{{SEL}}}", "{{instance}} {{collector}}"),
           (f"3 * inferwatch_collector_interval_seconds{{{SEL}}}", "{{instance}} {{collector}} stale after")),
        ts("Config reload", "1 when the last config reload (SIGHUP, POST /-/reload) succeeded or none was tried, 0 "
           "when the file was invalid and the previous config still runs "
           "(inferwatch_config_last_reload_successful); InferwatchConfigReloadFailed fires after 15 minutes at 0.",
           "none", (f"inferwatch_config_last_reload_successful{{{SEL}}}", "{{instance}}"), mappings=LOADED_FAILED,
           min=0, max=1),
        ts("Disk used", "Share of each watched filesystem in use (1 - avail / size); DiskUsageHigh warns at 80% "
           "and pages at 90%.", "percentunit",
           (f"1 - storage_filesystem_avail_bytes{{{SEL}}} / storage_filesystem_size_bytes{{{SEL}}}",
            "{{instance}} {{path}}"), min=0, max=1),
    ],
    [query_var("service", "Service", 'label_values(service_up{job=~"$job", instance=~"$instance"}, service)'),
     query_var("queue", "Queue", 'label_values(job_queue_depth{job=~"$job", instance=~"$instance"}, queue)')],
)

pipeline = dashboard(
    "inferwatch-pipeline", "inferwatch / Pipeline, WebSocket & HTTP",
    "Pipeline-stage timings and errors, job durations, event ingest, the /ws/system WebSocket and the daemon's "
    "HTTP API.",
    [
        ts("Stage duration (p95)", "95th percentile of each stage's duration (pipeline_stage_duration_seconds).", "s",
           (f'histogram_quantile(0.95, sum by (instance, stage, le) (rate(pipeline_stage_duration_seconds_bucket'
            f'{{{SEL}, stage=~"$stage"}}[{RI}])))', "{{stage}} p95"),
           (f'histogram_quantile(0.5, sum by (instance, stage, le) (rate(pipeline_stage_duration_seconds_bucket'
            f'{{{SEL}, stage=~"$stage"}}[{RI}])))', "{{stage}} p50")),
        ts("Stage runs", "Stage events per second (rate of pipeline_stage_duration_seconds_count).", "ops",
           (f'sum by (instance, stage) (rate(pipeline_stage_duration_seconds_count{{{SEL}, stage=~"$stage"}}[{RI}]))',
            "{{stage}}")),
        ts("Stage error ratio", "Share of each stage's runs that reported an error; PipelineStageErrorRateHigh "
           "fires above 5%.", "percentunit",
           (f'sum by (instance, stage) (rate(pipeline_stage_errors_total{{{SEL}, stage=~"$stage"}}[{RI}])) / '
            f'sum by (instance, stage) (rate(pipeline_stage_duration_seconds_count{{{SEL}, stage=~"$stage"}}[{RI}]))',
            "{{stage}}"), min=0),
        ts("Stage errors by type", "Errors per second by stage and error type (rate of pipeline_stage_errors_total).",
           "ops",
           (f'sum by (instance, stage, error_type) (rate(pipeline_stage_errors_total{{{SEL}, stage=~"$stage"}}[{RI}]))',
            "{{stage}} {{error_type}}")),
        ts("Job duration", "95th and 50th percentile of whole-job duration (pipeline_job_duration_seconds); "
           "PipelineJobsSlow fires when p95 passes 120 s.", "s",
           (f"histogram_quantile(0.95, sum by (instance, le) (rate(pipeline_job_duration_seconds_bucket{{{SEL}}}[{RI}])))",
            "{{instance}} p95"),
           (f"histogram_quantile(0.5, sum by (instance, le) (rate(pipeline_job_duration_seconds_bucket{{{SEL}}}[{RI}])))",
            "{{instance}} p50")),
        ts("Jobs and items", "Finished jobs per second by status, and items processed per second (inference FPS).",
           "ops",
           (f"sum by (instance, status) (rate(pipeline_jobs_total{{{SEL}}}[{RI}]))", "jobs {{status}}"),
           (f"sum by (instance) (rate(pipeline_items_processed_total{{{SEL}}}[{RI}]))", "items")),
        ts("Events ingested", "Pipeline events accepted per second by source, and rejected by reason.", "ops",
           (f"sum by (instance, source) (rate(pipeline_events_total{{{SEL}}}[{RI}]))", "accepted {{source}}"),
           (f"sum by (instance, reason) (rate(pipeline_events_rejected_total{{{SEL}}}[{RI}]))", "rejected {{reason}}")),
        ts("WebSocket clients", "Open /ws/system connections by client type (websocket_connections_active).", "short",
           (f"websocket_connections_active{{{SEL}}}", "{{instance}} {{client_type}}")),
        ts("WebSocket messages", "Messages written per second by event type (rate of websocket_messages_sent_total).",
           "ops",
           (f"sum by (instance, event_type) (rate(websocket_messages_sent_total{{{SEL}}}[{RI}]))", "{{event_type}}")),
        ts("WebSocket errors", "Connections ended per second by cause: slow_consumer, send_failed, protocol, "
           "ping_timeout (rate of websocket_errors_total).", "ops",
           (f"sum by (instance, error_type) (rate(websocket_errors_total{{{SEL}}}[{RI}]))", "{{error_type}}")),
        ts("WebSocket connection lifetime (p95)", "95th percentile of how long connections lasted "
           "(websocket_connection_duration_seconds).", "s",
           (f"histogram_quantile(0.95, sum by (instance, le) (rate(websocket_connection_duration_seconds_bucket{{{SEL}}}[{RI}])))",
            "{{instance}} p95")),
        ts("HTTP requests", "API requests per second by route template and status code (rate of http_requests_total).",
           "reqps",
           (f"sum by (instance, route, code) (rate(http_requests_total{{{SEL}}}[{RI}]))", "{{route}} {{code}}")),
        ts("HTTP 5xx ratio", "Share of requests answered 5xx, leaving out the health endpoints' deliberate 503s; "
           "HttpErrorRateHigh fires above 5%.", "percentunit",
           (f'(sum by (instance) (rate(http_requests_total{{{SEL}, code=~"5..", route!~"/api/system/health|/-/ready"}}[{RI}]))'
            f' or sum by (instance) (rate(http_requests_total{{{SEL}}}[{RI}])) * 0)'
            f' / sum by (instance) (rate(http_requests_total{{{SEL}}}[{RI}]))', "{{instance}}"), min=0),
        ts("HTTP latency (p95)", "95th percentile of time to response headers by route "
           "(http_request_duration_seconds).", "s",
           (f"histogram_quantile(0.95, sum by (instance, route, le) (rate(http_request_duration_seconds_bucket{{{SEL}}}[{RI}])))",
            "{{route}}")),
    ],
    [query_var("stage", "Stage", 'label_values(pipeline_stage_duration_seconds_count{job=~"$job", instance=~"$instance"}, stage)')],
)


FSEL = 'job=~"$job", cluster=~"$cluster", instance=~"$instance"'
CSEL = 'job=~"$job", cluster=~"$cluster"'

fleet = dashboard(
    "inferwatch-fleet", "inferwatch / Fleet",
    "Every node at once, from the recording rules of monitoring/recording_rules.yml (instance: and cluster: "
    "aggregates), so it stays fast with thousands of GPUs.",
    [
        stat("Nodes up", "Nodes Prometheus scraped at the last scrape (sum of up) over the selected clusters.", "none",
             f"sum(up{{{FSEL}}})", w=4),
        stat("GPUs", "GPUs that answered their node's last NVML poll (instance:gpu_devices:sum).", "none",
             f"sum(instance:gpu_devices:sum{{{FSEL}}})", w=4),
        stat("Hottest GPU", "Highest core temperature in the selection (instance:gpu_temperature_celsius:max).",
             "celsius", f"max(instance:gpu_temperature_celsius:max{{{FSEL}}})", w=4,
             thresholds=threshold((None, "green"), (75, "orange"), (85, "red"))),
        stat("Services down", "Monitored services whose last check failed (instance:service_down:count).", "none",
             f"sum(instance:service_down:count{{{FSEL}}})", w=4, thresholds=threshold((None, "green"), (1, "red"))),
        stat("Jobs in DLQs", "Jobs that failed all retries, over every node (instance:dlq_depth:sum).", "none",
             f"sum(instance:dlq_depth:sum{{{FSEL}}})", w=4, thresholds=threshold((None, "green"), (1, "orange"))),
        stat("Power", "Power drawn by every selected GPU (instance:gpu_power_usage_watts:sum).", "watt",
             f"sum(instance:gpu_power_usage_watts:sum{{{FSEL}}})", w=4),
        merged_table("Instances", "One row per node: up, GPUs, hottest GPU, services down, DLQ jobs, failing "
                     "collectors and the inferwatch version (from inferwatch_build_info).", "none", [
                         (f"up{{{FSEL}}}", "up"),
                         (f"instance:gpu_devices:sum{{{FSEL}}}", "GPUs"),
                         (f"instance:gpu_temperature_celsius:max{{{FSEL}}}", "hottest °C"),
                         (f"instance:service_down:count{{{FSEL}}}", "services down"),
                         (f"instance:dlq_depth:sum{{{FSEL}}}", "DLQ jobs"),
                         (f"instance:inferwatch_collector_failing:count{{{FSEL}}}", "collectors failing"),
                         (f"inferwatch_build_info{{{FSEL}}}", "build"),
                     ], h=10),
        table("Hottest GPUs (top 10)", "The ten hottest GPUs of the selection, with their node and UUID "
              "(topk over gpu_temperature_celsius).", "celsius", f"topk(10, gpu_temperature_celsius{{{FSEL}}})"),
        ts("GPU utilisation per cluster", "Mean GPU utilisation per cluster (cluster:gpu_utilization_ratio:avg) and "
           "mean SM active where GPM answers (cluster:gpu_sm_active_ratio:avg).", "percentunit",
           (f"cluster:gpu_utilization_ratio:avg{{{CSEL}}}", "{{cluster}} utilisation"),
           (f"cluster:gpu_sm_active_ratio:avg{{{CSEL}}}", "{{cluster}} SM active"), min=0, max=1),
        ts("Memory used per cluster", "Device memory used over total per cluster (cluster:gpu_memory_used_bytes:ratio).",
           "percentunit", (f"cluster:gpu_memory_used_bytes:ratio{{{CSEL}}}", "{{cluster}}"), min=0, max=1),
        ts("Power per cluster", "Power drawn per cluster (cluster:gpu_power_usage_watts:sum).", "watt",
           (f"cluster:gpu_power_usage_watts:sum{{{CSEL}}}", "{{cluster}}")),
        ts("DLQ jobs per cluster", "Jobs in dead-letter queues per cluster (cluster:dlq_depth:sum).", "short",
           (f"cluster:dlq_depth:sum{{{CSEL}}}", "{{cluster}}")),
        ts("Nodes up and services down per cluster", "Nodes scraped (cluster:up:sum) and failed services "
           "(cluster:service_down:count) per cluster.", "short",
           (f"cluster:up:sum{{{CSEL}}}", "{{cluster}} nodes up"),
           (f"cluster:service_down:count{{{CSEL}}}", "{{cluster}} services down")),
        ts("Firing alerts by instance", "Alerts firing now per node (ALERTS), by severity.", "short",
           (f'sum by (instance, severity) (ALERTS{{alertstate="firing", {FSEL}}})', "{{instance}} {{severity}}")),
    ],
)


# The inference records (monitoring/inference_rules.yml) keep instance,
# service and server only: no job, no cluster. The Node variable (the
# instance, narrowed by Job and Cluster through inferwatch_build_info)
# selects them.
ISEL = 'instance=~"$instance", service=~"$service"'


def stats(record, *suffixes):
    """One query for the quantiles and the mean of a measure, each series
    labelled `stat`: servers give either, and the query answers with any."""
    return " or ".join(f'label_replace({record}:{x}{{{ISEL}}}, "stat", "{x}", "", "")' for x in suffixes)

inference = dashboard(
    "inferwatch-inference", "inferwatch / Inference",
    "What the inference servers (vLLM, SGLang, TGI, Triton, llama.cpp, MLServer) say about their own work, in one "
    "vocabulary: latency, load, KV cache, tokens, energy per token and the SLOs. A server that does not report a "
    "measure has no line for it (docs/inference.md).",
    [
        row("Latency"),
        ts("Time to first token", "From a request's arrival to its first output token, 50th, 90th and 99th "
           "percentile over 5 minutes (inference:time_to_first_token_seconds; OpenTelemetry "
           "gen_ai.server.time_to_first_token): vLLM, SGLang, and Triton's opt-in first-response histogram.", "s",
           (f"inference:time_to_first_token_seconds:p50{{{ISEL}}}", "{{instance}} {{service}} p50"),
           (f"inference:time_to_first_token_seconds:p90{{{ISEL}}}", "{{instance}} {{service}} p90"),
           (f"inference:time_to_first_token_seconds:p99{{{ISEL}}}", "{{instance}} {{service}} p99")),
        ts("Time per output token", "Time between output tokens, 50th and 99th percentile over 5 minutes "
           "(inference:time_per_output_token_seconds; OpenTelemetry gen_ai.server.time_per_output_token): vLLM's "
           "and SGLang's inter-token latency, TGI's mean time per token of each request.", "s",
           (f"inference:time_per_output_token_seconds:p50{{{ISEL}}}", "{{instance}} {{service}} p50"),
           (f"inference:time_per_output_token_seconds:p99{{{ISEL}}}", "{{instance}} {{service}} p99")),
        ts("Request duration", "End-to-end time of a request inside the server, 50th and 99th percentile over 5 "
           "minutes (vLLM, SGLang, TGI), or the 5-minute mean where the server only counts totals (Triton, MLServer) "
           "(inference:request_duration_seconds; OpenTelemetry gen_ai.server.request.duration).", "s",
           (stats("inference:request_duration_seconds", "p50", "p99", "mean"), "{{instance}} {{service}} {{stat}}")),
        ts("Queue time", "How long requests waited before the engine took them: 99th percentile over 5 minutes "
           "(vLLM, SGLang, TGI) or the 5-minute mean (Triton) (inference:queue_time_seconds).", "s",
           (stats("inference:queue_time_seconds", "p99", "mean"), "{{instance}} {{service}} {{stat}}")),
        row("Load"),
        ts("Requests running and waiting", "Requests the engine is working on and requests waiting for it "
           "(inference:requests_running, inference:requests_waiting; for MLServer the 5-minute mean of its queue "
           "histograms). InferenceQueueGrowing fires when the waiting ones keep growing for 10 minutes while the "
           "server still works.", "short",
           (f"inference:requests_running{{{ISEL}}}", "{{instance}} {{service}} running"),
           (f"inference:requests_waiting{{{ISEL}}}", "{{instance}} {{service}} waiting")),
        ts("KV cache used", "Share of the KV cache in use (inference:kv_cache_usage:ratio): vLLM and SGLang (the "
           "fullest engine), TGI (tokens the running batch reserved over its budget), Triton TensorRT-LLM (used "
           "over maximum blocks). InferenceKvCacheSaturated fires at 95% with preemptions.", "percentunit",
           (f"inference:kv_cache_usage:ratio{{{ISEL}}}", "{{instance}} {{service}}"), min=0, max=1),
        ts("Preemptions", "Requests per second the engine evicted from the KV cache to make room, to recompute "
           "later (inference:preemptions:rate5m; vLLM only).", "ops",
           (f"inference:preemptions:rate5m{{{ISEL}}}", "{{instance}} {{service}}")),
        ts("Requests by outcome", "Finished requests per second, success or error; error counts client "
           "cancellations too (inference:requests:rate5m; not llama.cpp).", "reqps",
           (f"inference:requests:rate5m{{{ISEL}}}", "{{instance}} {{service}} {{outcome}}")),
        row("Tokens and energy"),
        ts("Tokens per second", "Prompt tokens in (cached ones included) and generated tokens out, per second "
           "(inference:input_tokens:rate5m, inference:output_tokens:rate5m): vLLM, SGLang, TGI, llama.cpp.", "short",
           (f"inference:input_tokens:rate5m{{{ISEL}}}", "{{instance}} {{service}} in"),
           (f"inference:output_tokens:rate5m{{{ISEL}}}", "{{instance}} {{service}} out")),
        ts("Output tokens per joule", "Generated tokens per joule of GPU energy charged to the service "
           "(inference:output_tokens_per_joule, from gpu_service_energy_joules_total summed over its GPUs).",
           "short", (f"inference:output_tokens_per_joule{{{ISEL}}}", "{{instance}} {{service}}")),
        ts("Energy per million output tokens", "Watt-hours of GPU energy per million generated tokens "
           "(inference:energy_per_million_output_tokens_wh); empty while the service generates nothing.", "watth",
           (f"inference:energy_per_million_output_tokens_wh{{{ISEL}}}", "{{instance}} {{service}}")),
        row("SLOs"),
        ts("Error ratio", "Share of finished requests that failed, per node over 5 minutes (from "
           "inference:requests:rate5m), and each SLO's error ratio over 30 minutes "
           "(slo:sli_error:ratio_rate30m, from the rules inferwatch slo-rules writes).", "percentunit",
           (f'sum by (instance, service) (inference:requests:rate5m{{{ISEL}, outcome="error"}}) '
            f"/ sum by (instance, service) (inference:requests:rate5m{{{ISEL}}})", "{{instance}} {{service}}"),
           (f"slo:sli_error:ratio_rate30m{{{ISEL}}}", "{{instance}} {{slo}} (30m)"), min=0),
        ts("Error budget left", "Share of each SLO's error budget not yet spent in its window "
           "(slo:error_budget_remaining:ratio, from the rules inferwatch slo-rules writes); below 0 the SLO is "
           "missed.", "percentunit",
           (f"slo:error_budget_remaining:ratio{{{ISEL}}}", "{{instance}} {{slo}}"), max=1),
    ],
    [query_var("service", "Service", 'label_values(up{job="inference", instance=~"$instance"}, service)')],
    instance_label="Node",
)


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "grafana-dashboards")
    check = "--check" in sys.argv
    stale = []
    for name, d in [("overview", overview), ("gpu", gpu), ("gpu-efficiency", efficiency), ("services-dlq", services),
                    ("pipeline-ws-http", pipeline), ("fleet", fleet), ("inference", inference)]:
        text = json.dumps(d, indent=2, ensure_ascii=False) + "\n"
        path = os.path.join(root, f"inferwatch-{name}.json")
        if check:
            if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
                stale.append(path)
        else:
            os.makedirs(root, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        sys.exit("out of date (run python3 scripts/gen_dashboards.py): " + ", ".join(stale))


if __name__ == "__main__":
    main()
