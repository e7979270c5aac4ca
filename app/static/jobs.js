// Export jobs on the pages (progressive enhancement: without JavaScript the buttons are plain
// download links and /exports is a static list).
// - A download button with data-job="<format>" queues a job (POST /api/exports with the
//   button's filters), shows a progress bar with percent and time left, then downloads the file.
//   Any format works: the list page marks XLSX (and ZIP, where that format exists).
// - On /exports, rows of queued or running jobs are polled and updated in place.
// With access control on, the calls ride on the sign-in session; POST and DELETE send the
// session's CSRF token (the page's <meta name="csrf-token">) in X-CSRF-Token.
"use strict";

(() => {
  const POLL_MS = 400;
  const FINISHED = ["done", "failed", "cancelled", "expired"];

  function csrfHeaders() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? { "X-CSRF-Token": meta.content } : {};
  }

  function duration(seconds) {
    if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function size(bytes) {
    if (bytes == null) return "";
    if (bytes >= 1048576) return `${(bytes / 1048576).toFixed(1)} MB`;
    if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${bytes} B`;
  }

  function describe(job) {
    if (job.state === "queued") return "Queued, waiting for a worker…";
    if (job.state === "running") {
      const left = job.eta_seconds == null ? "" : ` · about ${duration(job.eta_seconds)} left`;
      return `${Math.floor(job.percent)}%${left} (${job.runs_done} of ${job.runs_total} runs)`;
    }
    if (job.state === "done") return `Ready: ${size(job.size_bytes)}`;
    if (job.state === "failed") return `Failed: ${job.error}`;
    return job.state === "expired" ? "Expired: the file was deleted" : job.state;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.error || `HTTP ${response.status}`;
    } catch (err) {
      return `HTTP ${response.status}`;
    }
  }

  // Poll a job until it finishes; onUpdate sees every state. Network hiccups are retried.
  async function watch(statusUrl, onUpdate) {
    for (;;) {
      let job = null;
      try {
        const response = await fetch(statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!response.ok) {
          onUpdate(null, await errorText(response));
          return null;
        }
        job = await response.json();
      } catch (err) {
        job = null;
      }
      if (job) {
        onUpdate(job, null);
        if (FINISHED.includes(job.state)) return job;
      }
      await new Promise((resolve) => window.setTimeout(resolve, POLL_MS));
    }
  }

  function progressPanel(bar) {
    let panel = bar.parentElement.querySelector(".job-progress");
    if (!panel) {
      panel = document.createElement("div");
      panel.className = "job-progress";
      panel.id = "job-progress";
      panel.innerHTML = '<progress max="100" value="0"></progress> <span class="job-text" role="status" aria-live="polite"></span> <a class="job-download" hidden>Download again</a>';
      bar.after(panel);
    }
    return panel;
  }

  async function startJob(link, bar) {
    const panel = progressPanel(bar);
    const progress = panel.querySelector("progress");
    const text = panel.querySelector(".job-text");
    const again = panel.querySelector(".job-download");
    again.hidden = true;
    progress.value = 0;
    panel.dataset.state = "queued";
    text.textContent = `Starting the ${link.textContent.trim()} export…`;
    // The button's own query string holds the filters and options of the direct download.
    const form = new URLSearchParams(new URL(link.href, window.location.href).search);
    form.set("format", link.dataset.job);
    let response;
    try {
      response = await fetch(bar.dataset.jobsUrl, { method: "POST", body: form, credentials: "same-origin",
                                                    headers: { Accept: "application/json", ...csrfHeaders() } });
    } catch (err) {
      text.textContent = "The export could not be started (no connection). Please try again.";
      panel.dataset.state = "failed";
      return;
    }
    if (response.status !== 202) {
      text.textContent = `The export could not be started: ${await errorText(response)}`;
      panel.dataset.state = "failed";
      return;
    }
    const job = await response.json();
    panel.dataset.jobId = job.id;
    const last = await watch(job.status_url, (update, error) => {
      if (error) {
        text.textContent = error;
        return;
      }
      panel.dataset.state = update.state;
      progress.value = update.state === "done" ? 100 : update.percent;
      text.textContent = describe(update);
    });
    if (last && last.state === "done") {
      again.href = last.download_url;
      again.hidden = false;
      window.location.assign(last.download_url); // an attachment: the page stays
    }
  }

  function enhanceButtons() {
    document.querySelectorAll(".download-bar[data-jobs-url]").forEach((bar) => {
      bar.querySelectorAll("a[data-job]").forEach((link) => {
        link.addEventListener("click", (event) => {
          event.preventDefault();
          startJob(link, bar);
        });
      });
    });
  }

  function enhanceJobList() {
    document.querySelectorAll("tr.job[data-status-url]").forEach((row) => {
      if (FINISHED.includes(row.dataset.state)) return;
      watch(row.dataset.statusUrl, (job, error) => {
        const state = row.querySelector(".job-state");
        if (error) {
          state.textContent = error;
          return;
        }
        row.dataset.state = job.state;
        state.textContent = job.state;
        const progress = row.querySelector("progress");
        const text = row.querySelector(".job-text");
        if (progress) progress.value = job.percent;
        if (text) text.textContent = describe(job);
        if (FINISHED.includes(job.state)) {
          if (progress) progress.remove();
          if (text) text.remove();
          row.querySelector(".size").textContent = size(job.size_bytes);
          const outcome = row.querySelector(".outcome");
          outcome.textContent = "";
          if (job.download_url) {
            const link = document.createElement("a");
            link.className = "job-download";
            link.href = job.download_url;
            link.textContent = "Download";
            outcome.append(link);
          } else if (job.error) {
            const span = document.createElement("span");
            span.className = "job-error";
            span.textContent = job.error;
            outcome.append(span);
          }
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    enhanceButtons();
    enhanceJobList();
  });
})();
