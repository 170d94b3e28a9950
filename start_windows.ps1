# IB Data Agent starter for Windows (Windows PowerShell 5.1 or newer). start_windows.bat only runs
# this script: all the start logic is here, in one place (the .bat says why).
# The same steps as start_unix.sh: use the bundled Python (python_bundle\python.exe) and install into
# its own site-packages, or else a system Python 3.9+ with a virtual environment .venv next to this
# script; install requirements.txt only when it changed since the last install (offline from the
# wheels folder when the release has one); then run the agent with the arguments passed through.
# Exit code: the agent's, or 1 when Python or the dependencies could not be set up.

$AgentDir = $PSScriptRoot
$Requirements = Join-Path $AgentDir 'requirements.txt'
# --demo also runs the fake MA Tracker cloud, which needs aiohttp
if ($args.Count -gt 0 -and $args[0] -eq '--demo') {
    $Requirements = Join-Path $AgentDir 'requirements-demo.txt'
}
$Wheels = Join-Path $AgentDir 'wheels'
$BundledPython = Join-Path $AgentDir 'python_bundle\python.exe'

function Write-PythonNotFound {
    Write-Host 'Python not found: IB Data Agent needs Python 3.9 or newer.'
    Write-Host 'This should not happen with the bundled Python (folder python_bundle). Try:'
    Write-Host '  1. Re-download the agent from the MA Tracker web app'
    Write-Host "  2. Make sure you extracted the ZIP file (don't run from inside the ZIP)"
    Write-Host 'If you prefer to install system Python:'
    Write-Host '  1. Download Python from https://www.python.org/downloads/'
    Write-Host '  2. Important: Check "Add Python to PATH" during installation'
    Write-Host '  3. Restart your computer'
    Write-Host '  4. Run the start script again'
}

# True when the Python at this path exists and starts (a venv breaks when its base Python is removed).
function Test-Python([string]$Exe) {
    if (-not (Test-Path -LiteralPath $Exe)) { return $false }
    & $Exe -c 'import sys' 2>$null
    return ($LASTEXITCODE -eq 0)
}

# The full path of the Python 3.9+ that this command runs, or $null. Checking by running it also
# rules out the Microsoft Store placeholder python.exe, which only prints a hint and fails.
function Find-Python([string]$Command, [string[]]$Flags = @()) {
    if (-not (Get-Command $Command -CommandType Application -ErrorAction SilentlyContinue)) { return $null }
    $probe = 'import sys; print(sys.executable) if sys.version_info >= (3, 9) else sys.exit(1)'
    $found = & $Command @Flags -c $probe 2>$null
    if ($LASTEXITCODE -eq 0 -and $found) { return $found }
    return $null
}

if (Test-Path -LiteralPath $BundledPython) {
    # The embeddable Python has no venv module; its python3XX._pth keeps "import site" (the release
    # build sees to that), so packages installed into its own Lib\site-packages are found.
    $Python = $BundledPython
    $EnvDir = Split-Path -Parent $BundledPython
} else {
    $EnvDir = Join-Path $AgentDir '.venv'
    $Python = Join-Path $EnvDir 'Scripts\python.exe'
    if (-not (Test-Python $Python)) {
        $SystemPython = Find-Python -Command 'py' -Flags '-3'
        if (-not $SystemPython) { $SystemPython = Find-Python -Command 'python' }
        if (-not $SystemPython) { Write-PythonNotFound; exit 1 }
        Write-Host "Setting up Python environment in $EnvDir (first run only)..."
        if (Test-Path -LiteralPath $EnvDir) { Remove-Item -LiteralPath $EnvDir -Recurse -Force }
        & $SystemPython -m venv $EnvDir
        if ($LASTEXITCODE -ne 0) { Write-Host "Could not create a virtual environment with $SystemPython."; exit 1 }
    }
}

$Stamp = Join-Path $EnvDir '.requirements.sha256'
# requirements-demo.txt includes requirements.txt: a change to either means installing again
$Wanted = (Get-FileHash -LiteralPath $Requirements -Algorithm SHA256).Hash +
    (Get-FileHash -LiteralPath (Join-Path $AgentDir 'requirements.txt') -Algorithm SHA256).Hash
if ((Get-Content -LiteralPath $Stamp -ErrorAction SilentlyContinue) -ne $Wanted) {
    Write-Host "Installing dependencies from $(Split-Path -Leaf $Requirements)..."
    $Pip = @('-m', 'pip')
    $PipArgs = @('install', '--disable-pip-version-check', '--no-warn-script-location', '-q', '-r', $Requirements)
    if (Test-Path -LiteralPath $Wheels) {
        # Offline from the release's wheels. The embeddable Python has no pip installed, so pip runs
        # from its own wheel: a wheel is a zip file, and Python runs the pip\__main__.py inside it.
        $PipArgs += @('--no-index', '--find-links', $Wheels)
        $PipWheel = Get-ChildItem -LiteralPath $Wheels -Filter 'pip-*.whl' | Select-Object -First 1
        if ($PipWheel) { $Pip = @(Join-Path $PipWheel.FullName 'pip') }
    }
    & $Python @Pip @PipArgs
    if ($LASTEXITCODE -ne 0) {
        Write-Host 'Installing dependencies failed. Check your internet connection, or re-download the agent'
        Write-Host 'from the MA Tracker web app, and run this script again.'
        exit 1
    }
    Set-Content -LiteralPath $Stamp -Value $Wanted
}

& $Python (Join-Path $AgentDir 'ib_data_agent.py') @args
exit $LASTEXITCODE
