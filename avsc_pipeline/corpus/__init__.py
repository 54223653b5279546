"""The data sets themselves: where they come from and how their lists read.

Modules:
    clips: the `Clip` record every manifest reader returns, and the tab-separated lists.
    tau: the TAU Urban Audio-Visual Scenes 2021 layout (classes, lists, `load_tau`).
    manifest: a TAU folder or a generic CSV (`load_manifest`), and class lists.
    download: fetching a data set's packages, resumable and checked against their MD5
        (the TAU package lists ship as data in `tau_packages.json`).
    unpack: atomic, resumable unpacking of those packages into one folder.

Nothing is imported here, so `import avsc_pipeline.corpus` stays cheap.
"""
