# IB Data Agent starter for Windows (Windows PowerShell 5.1 or newer). start_windows.bat only runs
# this script: all the start logic is here, in one place (the .bat says why).
# The same steps as start_unix.sh: use the bundled Python (python_bundle\python.exe) and install into
# its own site-packages, or else a system Python 3.10+ with a virtual environment .venv next to this
# script; install the requirements only when the last finished install did not cover them (offline
# from the wheels folder when the release has one); then run the agent with the arguments passed
# through. A half-made environment (its python does not start, no pip, an install that did not
# finish) is rebuilt once, saying so; when the rebuild fails too, the script prints the one command
# that fixes it by hand. For the bundled Python, rebuilding means emptying what pip installed into it.
# Exit code: the agent's, or 1 when Python or the dependencies could not be set up.

$AgentDir = $PSScriptRoot
$Requirements = Join-Path $AgentDir 'requirements.txt'
# --demo also runs the fake MA Tracker cloud, which needs aiohttp
if ($args.Count -gt 0 -and $args[0] -eq '--demo') {
    $Requirements = Join-Path $AgentDir 'requirements-demo.txt'
}
$Wheels = Join-Path $AgentDir 'wheels'
$BundledPython = Join-Path $AgentDir 'python_bundle\python.exe'
# The oldest Python the agent runs on: IB's ibapi 10.50 needs 3.10 (agent/__init__.py MIN_PYTHON).
$FloorCheck = 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'
$StampName = '.requirements.sha256'
$SystemPython = $null

function Write-PythonNotFound {
    Write-Host 'Python not found: IB Data Agent needs Python 3.10 or newer.'
    Write-Host 'This should not happen with the bundled Python (folder python_bundle). Try:'
    Write-Host '  1. Re-download the agent from the MA Tracker web app'
    Write-Host "  2. Make sure you extracted the ZIP file (don't run from inside the ZIP)"
    Write-Host 'If you prefer to install system Python:'
    Write-Host '  1. Download Python from https://www.python.org/downloads/'
    Write-Host '  2. Important: Check "Add Python to PATH" during installation'
    Write-Host '  3. Restart your computer'
    Write-Host '  4. Run the start script again'
}

# True when the Python at this path exists, starts and is 3.10 or newer (a venv breaks when its base
# Python is removed). A python.exe that cannot even be started throws: that is a no as well.
function Test-Python([string]$Exe) {
    if (-not (Test-Path -LiteralPath $Exe)) { return $false }
    try {
        & $Exe -c $FloorCheck 2>$null | Out-Null
        return ($LASTEXITCODE -eq 0)
    } catch {
        return $false
    }
}

# The full path of the Python 3.10+ that this command runs, or $null. Checking by running it also
# rules out the Microsoft Store placeholder python.exe, which only prints a hint and fails.
function Find-Python([string]$Command, [string[]]$Flags = @()) {
    if (-not (Get-Command $Command -CommandType Application -ErrorAction SilentlyContinue)) { return $null }
    $probe = 'import sys; print(sys.executable) if sys.version_info >= (3, 10) else sys.exit(1)'
    $found = & $Command @Flags -c $probe 2>$null
    if ($LASTEXITCODE -eq 0 -and $found) { return $found }
    return $null
}

# The system Python a venv is made with, looked for once; none at all ends the script with the
# README's guidance.
function Get-SystemPython {
    if (-not $script:SystemPython) {
        $script:SystemPython = Find-Python -Command 'py' -Flags '-3'
        if (-not $script:SystemPython) { $script:SystemPython = Find-Python -Command 'python' }
        if (-not $script:SystemPython) { Write-PythonNotFound; exit 1 }
    }
    return $script:SystemPython
}

# One line "sha256  name" for every requirements file that installing this one reads: the file
# itself and, recursively, each file it pulls in with -r or -c (names relative to the first file's
# folder, hashes in lower case): the lines start_unix.sh writes.
function Get-RequirementsStamp([string]$File) {
    $Top = [System.IO.Path]::GetFullPath($File)
    $Base = Split-Path -Parent $Top
    $Include = '^\s*(?:-r|-c|--requirement|--constraint)[\s=]*(\S+)'
    $Todo = New-Object 'System.Collections.Generic.List[string]'
    $Todo.Add($Top)
    $Seen = @{}
    $Lines = @()
    for ($i = 0; $i -lt $Todo.Count; $i++) {
        $Path = $Todo[$i]
        if ($Seen.ContainsKey($Path)) { continue }
        $Seen[$Path] = $true
        if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) {
            Write-Host ('Could not read ' + $Path + ': re-download the agent from the MA Tracker web app.')
            exit 1
        }
        $Name = $Path
        if ($Path.StartsWith($Base + '\')) { $Name = $Path.Substring($Base.Length + 1) }
        $Hash = (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLower()
        $Lines += $Hash + '  ' + $Name.Replace('\', '/')
        $Dir = Split-Path -Parent $Path
        foreach ($Line in @(Get-Content -LiteralPath $Path)) {
            if ($Line -cmatch $Include) {
                $Todo.Add([System.IO.Path]::GetFullPath((Join-Path $Dir $Matches[1])))
            }
        }
    }
    return $Lines
}

# True when every wanted line is in the stamp, i.e. the last finished install read these same files
# unchanged. The --demo set pulls in the normal one, so after a --demo start a normal start installs
# nothing (and after a normal start only the first --demo start installs).
function Test-StampCovers([string]$StampFile, [string[]]$Lines) {
    if (-not (Test-Path -LiteralPath $StampFile)) { return $false }
    $Have = @(Get-Content -LiteralPath $StampFile)
    foreach ($Line in $Lines) {
        if ($Have -cnotcontains $Line) { return $false }
    }
    return $true
}

# True when pip runs: from its wheel when the release has a wheels folder, else the environment's own.
function Test-Pip {
    try {
        & $Python @Pip --version 2>$null | Out-Null
        return ($LASTEXITCODE -eq 0)
    } catch {
        return $false
    }
}

# Installs the requirements; returns $null, or what went wrong. The stamp goes first and comes back
# only when pip has finished, so an interrupted install leaves no stamp and the next start rebuilds.
function Install-Requirements {
    if (Test-Path -LiteralPath $Stamp) { Remove-Item -LiteralPath $Stamp -Force }
    try {
        & $Python @Pip @PipArgs | Out-Host
        $Failed = ($LASTEXITCODE -ne 0)
    } catch {
        $Failed = $true
    }
    if ($Failed) { return ('installing ' + (Split-Path -Leaf $Requirements) + ' failed') }
    Set-Content -LiteralPath $Stamp -Value $Wanted
    return $null
}

# A new environment with the requirements installed; returns $null, or what went wrong. The bundled
# Python cannot be made again, but what pip installed into it can: its Lib\site-packages (the
# embeddable Python ships none).
function New-Environment {
    $Target = $EnvDir
    if ($Bundled) { $Target = Join-Path $EnvDir 'Lib\site-packages' }
    if (Test-Path -LiteralPath $Target) {
        try {
            Remove-Item -LiteralPath $Target -Recurse -Force -ErrorAction Stop
        } catch {
            return ('deleting ' + $Target + ' failed: is the agent already running?')
        }
    }
    if (-not $Bundled) {
        $Base = Get-SystemPython
        & $Base -m venv $EnvDir | Out-Host
        if ($LASTEXITCODE -ne 0) { return "creating it with $Base failed" }
        if (-not (Test-Pip)) { return "$Base made it without pip" }
    }
    return Install-Requirements
}

# After the rebuild failed as well: the one command that fixes it by hand.
function Write-FixByHand([string]$Why) {
    $Target = $EnvDir
    if ($Bundled) { $Target = Join-Path $EnvDir 'Lib\site-packages' }
    Write-Host "Setting up the Python environment in $EnvDir failed again ($Why)."
    Write-Host 'Check your internet connection first (or re-download the agent from the MA Tracker web app).'
    Write-Host 'To fix it by hand, run in a Command Prompt (or delete that folder and start the agent again):'
    Write-Host ('  rmdir /s /q "' + $Target + '" && "' + (Join-Path $AgentDir 'start_windows.bat') + '"')
}

if (Test-Path -LiteralPath $BundledPython) {
    # The embeddable Python has no venv module; its python3XX._pth keeps "import site" (the release
    # build sees to that), so packages installed into its own Lib\site-packages are found.
    $Bundled = $true
    $Python = $BundledPython
    $EnvDir = Split-Path -Parent $BundledPython
    $FirstRun = -not (Test-Path -LiteralPath (Join-Path $EnvDir 'Lib\site-packages'))
} else {
    $Bundled = $false
    $EnvDir = Join-Path $AgentDir '.venv'
    $Python = Join-Path $EnvDir 'Scripts\python.exe'
    $FirstRun = -not (Test-Path -LiteralPath $EnvDir)
}
$Stamp = Join-Path $EnvDir $StampName
$Wanted = @(Get-RequirementsStamp $Requirements)
$Pip = @('-m', 'pip')
$PipArgs = @('install', '--disable-pip-version-check', '--no-warn-script-location', '-q', '-r', $Requirements)
if (Test-Path -LiteralPath $Wheels) {
    # Offline from the release's wheels. The embeddable Python has no pip installed, so pip runs
    # from its own wheel: a wheel is a zip file, and Python runs the pip\__main__.py inside it.
    $PipArgs += @('--no-index', '--find-links', $Wheels)
    $PipWheel = Get-ChildItem -LiteralPath $Wheels -Filter 'pip-*.whl' | Select-Object -First 1
    if ($PipWheel) { $Pip = @(Join-Path $PipWheel.FullName 'pip') }
}

# The same steps, in the same order, as ensure_venv in start_unix.sh.
$Ready = $false
$Problem = $null
if ($FirstRun) {
    if (-not $Bundled) { $null = Get-SystemPython }
    Write-Host "Setting up Python environment in $EnvDir (first run only)..."
    $Problem = New-Environment
    $Ready = -not $Problem
} elseif (-not (Test-Python $Python)) {
    $Problem = 'its python does not start or is older than 3.10'
} elseif (Test-StampCovers $Stamp $Wanted) {
    $Ready = $true
} elseif (-not (Test-Pip)) {
    $Problem = 'it has no pip'
} elseif (-not (Test-Path -LiteralPath $Stamp)) {
    $Problem = 'an earlier install did not finish'
} else {
    Write-Host "Installing dependencies from $(Split-Path -Leaf $Requirements)..."
    $Problem = Install-Requirements
    $Ready = -not $Problem
}
if (-not $Ready) {
    Write-Host "The Python environment in $EnvDir is not usable ($Problem): rebuilding it once..."
    $Problem = New-Environment
    if ($Problem) { Write-FixByHand $Problem; exit 1 }
}

& $Python (Join-Path $AgentDir 'ib_data_agent.py') @args
exit $LASTEXITCODE
